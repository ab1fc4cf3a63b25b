"""Fixtures for the workloads tests. Helpers live in wl_helpers.py (a module name no other test dir uses);
`build_tiny_model` and `tiny_spec` are re-exported here because other suites load this file by path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wl_helpers import build_tiny_model, tiny_spec  # noqa: E402

__all__ = ["build_tiny_model", "tiny_spec"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    import torch

    torch.set_num_threads(1)  # tiny models are overhead-bound; one thread avoids contention on shared cores
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))
