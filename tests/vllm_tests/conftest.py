"""vLLM tests: they run inside .venv-vllm (scripts/setup-vllm.sh), the second pytest run of scripts/test.sh.

Without vLLM they skip, unless SYNPO_REQUIRE_VLLM=1 (scripts/test.sh sets it): then a missing vLLM fails.
The KV cache is kept small (VLLM_CPU_KVCACHE_SPACE, GiB): the tests share a CPU machine's memory.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workloads"))
from wl_helpers import build_tiny_model  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("SYNPO_VLLM_EAGER", "1")

VLLM_VENV = Path(__file__).resolve().parents[2] / ".venv-vllm"


def pytest_collection_modifyitems(config, items):
    if importlib.util.find_spec("vllm") is not None:
        return
    why = f"vllm is not installed in {sys.prefix}; run `bash scripts/setup-vllm.sh` and {VLLM_VENV}/bin/pytest tests/vllm_tests"
    if os.environ.get("SYNPO_REQUIRE_VLLM") == "1":
        raise pytest.UsageError("SYNPO_REQUIRE_VLLM=1: " + why)
    for item in items:
        item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="session")
def llama3_like(tmp_path_factory) -> str:
    """A tiny random Llama whose tokenizer and chat template both start with <|begin_of_text|> (the
    double-BOS trap), with heads of 64 dimensions (what vLLM's CPU attention supports)."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama3"), head_dim=64, begin_of_text=True))
