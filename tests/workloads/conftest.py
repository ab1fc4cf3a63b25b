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


@pytest.fixture(scope="session")
def s3():
    """A real S3 server on 127.0.0.1 (SeaweedFS when built, else moto's server: synpo_devcluster.s3)."""
    pytest.importorskip("s3fs")
    from synpo_devcluster.s3 import s3_server

    with s3_server() as server:
        yield server


@pytest.fixture
def s3_env(s3, monkeypatch):
    """The server's endpoint and credentials in the environment, as spec.env / Secret refs give stage pods."""
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()  # a cached client would keep an earlier endpoint
    return s3
