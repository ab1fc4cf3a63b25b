"""End-to-end fixtures: the tiny random Llama of the workloads tests, written as a run file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

_WORKLOADS_CONFTEST = Path(__file__).resolve().parents[1] / "workloads" / "wl_helpers.py"
_spec = importlib.util.spec_from_file_location("synpo_workloads_test_fixtures", _WORKLOADS_CONFTEST)
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)

tiny_spec = fixtures.tiny_spec


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(fixtures.build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


def write_run(path: Path, name: str, spec: dict, namespace: str | None = None) -> Path:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    path.write_text(yaml.safe_dump({"apiVersion": "synpo.dev/v1alpha1", "kind": "SynPORun", "metadata": meta,
                                    "spec": spec}))
    return path


@pytest.fixture(scope="session")
def s3():
    """A real S3 server on 127.0.0.1 (SeaweedFS when built, else moto's server: synpo_devcluster.s3)."""
    pytest.importorskip("s3fs")
    from synpo_devcluster.s3 import s3_server

    with s3_server() as server:
        yield server
