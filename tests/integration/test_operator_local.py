"""`synpo operator --executor local`: a SynPORun applied to the real API server runs its stages as local
processes on a tiny random Llama and goes from apply to Succeeded with real stage outputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from .test_operator import RUNS, Operator, conditions, crds, wait_run  # noqa: F401  (crds is a fixture)

_conftest = Path(__file__).resolve().parents[1] / "workloads" / "wl_helpers.py"
_spec = importlib.util.spec_from_file_location("synpo_workloads_test_fixtures", _conftest)
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)

pytestmark = pytest.mark.workloads


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(fixtures.build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


def test_local_executor_runs_a_tiny_model_to_success(dev_cluster, crds, namespace, tmp_path, tiny_model):  # noqa: F811
    kube = dev_cluster.client()
    storage = tmp_path / "runs"
    op = Operator(dev_cluster.kubeconfig, namespace, tmp_path, extra_args=("--executor", "local"))
    op.start()
    try:
        spec = fixtures.tiny_spec(tiny_model, str(storage), iterations=1)
        kube.post(RUNS.format(ns=namespace), {"apiVersion": "synpo.dev/v1alpha1", "kind": "SynPORun",
                                              "metadata": {"name": "tiny-local"}, "spec": spec})
        status = wait_run(kube, namespace, "tiny-local", lambda s: s.get("phase") in ("Succeeded", "Failed"),
                          timeout=1200)["status"]
        assert status["phase"] == "Succeeded", (status, op.logs()[-4000:])
        assert conditions(status)["Succeeded"]["status"] == "True"
        stages = {s["name"]: s for s in status["stages"]}
        assert all(s["phase"] == "Succeeded" for s in stages.values())
        assert stages["i1-pairs"]["result"]["pairsTotal"] >= 1
        run_dir = storage / namespace / "tiny-local"
        assert (run_dir / "iter-1" / "train" / "model" / "config.json").exists()
        assert (run_dir / "iter-1" / "evaluate" / "manifest.json").exists()
        iterations = {i["index"]: i for i in status["iterations"]}
        assert iterations[1].get("pairsKept") is not None and iterations[1].get("score") is not None
        assert "synpo_runs" in op.metrics()
    finally:
        op.stop()
        if kube.exists(f"{RUNS.format(ns=namespace)}/tiny-local"):
            kube.patch(f"{RUNS.format(ns=namespace)}/tiny-local", {"metadata": {"finalizers": None}})
