"""The pre-flight on the dev cluster: a dead judge endpoint, a causal-LM checkpoint as reward model, a missing data
file and unwritable storage each fail the run in the pre-flight with reason PreflightFailed (condition and Event,
naming the spec field and the cause), with no other stage started.

Two ways, both against the real API server:
- the operator's Job path (`synpo operator`, Jobs; kwok plays kubelet): the pre-flight pod exits with the code,
  termination message and duration of the real pre-flight program, run here on the same spec first (kwok runs no
  containers);
- `synpo operator --executor local`: the real checks run as the stage processes.
Each prints the time from apply to PreflightFailed (`pytest -s` shows it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_operator import RUNS, Operator, apply, conditions, crds, jobs, wait_for_event, wait_run  # noqa: F401

_helpers = Path(__file__).resolve().parents[1] / "workloads" / "wl_helpers.py"
_spec = importlib.util.spec_from_file_location("synpo_workloads_test_fixtures", _helpers)
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)

pytestmark = pytest.mark.workloads
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(fixtures.build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="module")
def s3() -> Iterator:
    pytest.importorskip("s3fs")
    from synpo_devcluster.s3 import s3_server

    with s3_server() as server:
        yield server


@pytest.fixture
def s3_env(s3, monkeypatch) -> dict[str, str]:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return s3.env()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def case(kind: str, tiny_model: str, storage: str) -> tuple[dict, str, str]:
    """(spec, the field the failure must name, words of its cause) for one broken spec stored at `storage`."""
    if kind == "dead-judge":
        endpoint = f"http://127.0.0.1:{_closed_port()}/v1"
        spec = fixtures.tiny_spec(tiny_model, storage, iterations=1, evaluation={
            "judges": [{"type": "openai", "endpoint": endpoint, "model": "judge"}]})
        return spec, "spec.evaluation.judges[0].endpoint", f"{endpoint} does not answer"
    if kind == "causal-lm-reward-model":
        spec = fixtures.tiny_spec(tiny_model, storage, iterations=1,
                                  filter={"scorer": {"type": "rewardModel", "model": tiny_model}})
        return spec, "spec.filter.scorer.model", "the weights score.weight are not in the checkpoint"
    if kind == "missing-data":
        spec = fixtures.tiny_spec(tiny_model, storage, iterations=1)
        spec["data"]["seed"] = f"{storage.rsplit('/', 1)[0]}/data/no-such-seed.jsonl"
        return spec, "spec.data.seed", "no-such-seed.jsonl: file not found"
    assert kind == "unwritable-storage"
    spec = fixtures.tiny_spec(tiny_model, f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/runs", iterations=1)
    return spec, "spec.storage.uri", "bucket does not exist"


CASES = ["dead-judge", "causal-lm-reward-model", "missing-data", "unwritable-storage"]


@pytest.fixture
def bucket(s3) -> str:
    name = f"pf-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(name)
    return name


def real_preflight(spec: dict, name: str, namespace: str, workdir: Path, env: dict[str, str]
                   ) -> tuple[int, str, float]:
    """The pre-flight program on this spec, as its pod would run it: (exit code, termination message, seconds)."""
    node, config = next(fixtures.stage_configs(spec, spec["storage"]["uri"], run=name, namespace=namespace))
    assert node.key == "i0-preflight"
    path = workdir / "preflight.json"
    path.write_text(json.dumps(config))
    termination = workdir / "termination-log"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "synpo_workloads", "preflight", "--config", str(path)],
                          capture_output=True, text=True, timeout=300, env={
                              **os.environ, **env, "SYNPO_TERMINATION_LOG": str(termination),
                              "PYTHONPATH": os.pathsep.join([str(ROOT / "workloads"), str(ROOT / "operator")])})
    return proc.returncode, termination.read_text(), time.monotonic() - started


def assert_failed_in_preflight(kube, namespace: str, name: str, field: str, cause: str, started: float,
                               timeout: float = 120) -> float:
    done = wait_run(kube, namespace, name, lambda s: s.get("phase") in ("Failed", "Succeeded"), timeout=timeout)
    seconds = time.monotonic() - started
    st = done["status"]
    failed = conditions(st)["Failed"]
    assert st["phase"] == "Failed" and failed["status"] == "True" and failed["reason"] == "PreflightFailed", st
    assert f"{field}: " in failed["message"] and cause in failed["message"], failed["message"]
    assert [(s["name"], s["phase"]) for s in st["stages"]] == [("i0-preflight", "Failed")]  # nothing else started
    event = wait_for_event(kube, namespace, name, "PreflightFailed", field)
    assert event["type"] == "Warning" and cause in event["message"]
    return seconds


@pytest.mark.parametrize("kind", CASES)
def test_the_job_path_fails_the_run_in_the_preflight(kind, kube, dev_cluster, crds, namespace, tmp_path,  # noqa: F811
                                                     tiny_model, bucket, s3, s3_env):
    spec, field, cause = case(kind, tiny_model, f"s3://{bucket}/runs")
    name = f"pf-{kind}"[:40]
    env = s3_env
    if kind == "unwritable-storage":  # wrong credentials too: SeaweedFS creates a bucket on a signed write
        env = {**s3_env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
        cause = "signature" if s3.kind == "seaweedfs" else cause
    code, message, ran = real_preflight(spec, name, namespace, tmp_path, env)
    assert code == 2 and field in message and cause in message, message
    pods = {"*": {"synpo.dev/fake-duration": "300ms"},
            "preflight": {"synpo.dev/fake-exit-code": str(code), "synpo.dev/fake-termination-message": message,
                          "synpo.dev/fake-duration": f"{max(1, round(ran * 1000))}ms"}}
    op = Operator(dev_cluster.kubeconfig, namespace, tmp_path)
    op.start()
    try:
        started = time.monotonic()
        apply(kube, namespace, {"apiVersion": "synpo.dev/v1alpha1", "kind": "SynPORun", "metadata": {
            "name": name, "annotations": {"synpo.dev/test-pod-annotations": json.dumps(pods)}}, "spec": spec})
        seconds = assert_failed_in_preflight(kube, namespace, name, field, cause, started)
        assert set(jobs(kube, namespace, name)) == {f"{name}-i0-preflight"}
        job = jobs(kube, namespace, name)[f"{name}-i0-preflight"]
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert "preflight" in container["command"] and not container.get("resources", {}).get("limits", {}).get(
            "nvidia.com/gpu")
        print(f"\n[{kind}] Job path: apply -> PreflightFailed {seconds:.2f} s (the check itself: {ran:.2f} s)")
    finally:
        op.stop()
        release(kube, namespace, name)


# The local executor keeps its own state (stage configs, logs) under a local storage root, which it must write
# before any stage starts: unwritable storage is the Job path's case.
@pytest.mark.parametrize("kind", [k for k in CASES if k != "unwritable-storage"])
def test_the_local_executor_fails_the_run_in_the_preflight(kind, kube, dev_cluster, crds, namespace,  # noqa: F811
                                                           tmp_path, tiny_model):
    spec, field, cause = case(kind, tiny_model, str(tmp_path / "runs"))
    name = f"pfl-{kind}"[:40]
    op = Operator(dev_cluster.kubeconfig, namespace, tmp_path, extra_args=("--executor", "local"))
    op.start()
    try:
        started = time.monotonic()
        apply(kube, namespace, {"apiVersion": "synpo.dev/v1alpha1", "kind": "SynPORun",
                                "metadata": {"name": name}, "spec": spec})
        seconds = assert_failed_in_preflight(kube, namespace, name, field, cause, started, timeout=300)
        configs = tmp_path / "runs" / namespace / name / "configs"
        assert sorted(p.stem for p in configs.glob("*.json")) == ["i0-preflight"], op.logs()[-3000:]
        print(f"\n[{kind}] local executor: apply -> PreflightFailed {seconds:.2f} s")
    finally:
        op.stop()
        release(kube, namespace, name)


def release(kube, namespace: str, name: str) -> None:
    """Drop the run's finalizers (the operator is gone), so the namespace fixture can delete it."""
    if kube.exists(f"{RUNS.format(ns=namespace)}/{name}"):
        kube.patch(f"{RUNS.format(ns=namespace)}/{name}", {"metadata": {"finalizers": None}})


def test_a_fixed_spec_after_preflight_failed_runs_through(kube, dev_cluster, crds, namespace, tmp_path,  # noqa: F811
                                                           tiny_model, bucket, s3_env):
    """PreflightFailed, then the spec is fixed (a new generation): the pre-flight runs again, then everything."""
    spec, field, cause = case("dead-judge", tiny_model, f"s3://{bucket}/runs")
    code, message, _ = real_preflight(spec, "refix", namespace, tmp_path, s3_env)
    pods = {"*": {"synpo.dev/fake-duration": "200ms"},
            "preflight": {"synpo.dev/fake-exit-code": str(code), "synpo.dev/fake-termination-message": message}}
    op = Operator(dev_cluster.kubeconfig, namespace, tmp_path)
    op.start()
    path = f"{RUNS.format(ns=namespace)}/refix"
    try:
        apply(kube, namespace, {"apiVersion": "synpo.dev/v1alpha1", "kind": "SynPORun", "metadata": {
            "name": "refix", "annotations": {"synpo.dev/test-pod-annotations": json.dumps(pods)}}, "spec": spec})
        assert_failed_in_preflight(kube, namespace, "refix", field, cause, time.monotonic())
        old_uid = jobs(kube, namespace, "refix")["refix-i0-preflight"]["metadata"]["uid"]
        # what the fixed pre-flight's pod will say (kwok runs no containers), then the fix itself
        kube.patch(path, {"metadata": {"annotations": {"synpo.dev/test-pod-annotations": json.dumps(
            {"*": {"synpo.dev/fake-duration": "200ms"}})}}})
        kube.patch(path, {"spec": {"evaluation": {"judges": [{"type": "similarity"}]}}})
        done = wait_run(kube, namespace, "refix", lambda s: s.get("phase") == "Succeeded"
                        and s.get("observedGeneration") == 2, timeout=180)
        assert jobs(kube, namespace, "refix")["refix-i0-preflight"]["metadata"]["uid"] != old_uid
        assert all(s["phase"] == "Succeeded" for s in done["status"]["stages"])
    finally:
        op.stop()
        release(kube, namespace, "refix")
