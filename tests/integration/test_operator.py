"""The operator against the real control plane (synpo dev-cluster; kwok plays kubelet).

The operator runs as a subprocess (`synpo operator --namespace <test ns> --resync-seconds 1`), so a test can
kill -9 it and start it again. Pods get kwok's `synpo.dev/fake-*` annotations through the run's
`synpo.dev/test-pod-annotations` annotation, which the operator copies onto stage pod templates.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from reliability.chaos import JobLedger

from synpo_devcluster.client import ApiError, KubeClient

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
RUNS = "/apis/synpo.dev/v1alpha1/namespaces/{ns}/synporuns"
JOBS = "/apis/batch/v1/namespaces/{ns}/jobs"
PODS = "/api/v1/namespaces/{ns}/pods"

# stage summaries the fake pods report through their termination message
RESULTS = {
    "pairs": {"pairsKept": 7, "pairsTotal": 7, "rows": 7},
    "evaluate": {"winRate": 0.625, "lcWinRate": 0.6, "score": 0.25, "against": "M0", "n": 16},
    "keywords": {"rows": 40},
    "train": {"steps": 3},
    "base-responses": {"rows": 10},
    "refine": {"rows": 10},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_doc(name: str, *, pods: dict[str, dict[str, str]] | None = None, **spec: Any) -> dict:
    """A small run: 1 iteration, 2 shards, CPU-only stages except GPU ones (1 GPU), object-store storage."""
    per_stage = {stage: {"synpo.dev/fake-termination-message": json.dumps(result)}
                 for stage, result in RESULTS.items()}
    annotations: dict[str, dict[str, str]] = {"*": {"synpo.dev/fake-duration": "300ms"}}
    for key, value in per_stage.items():
        annotations[key] = dict(value)
    for key, value in (pods or {}).items():
        annotations.setdefault(key, {}).update(value)
    doc = {
        "apiVersion": "synpo.dev/v1alpha1",
        "kind": "SynPORun",
        "metadata": {"name": name,
                     "annotations": {"synpo.dev/test-pod-annotations": json.dumps(annotations)}},
        "spec": {
            "model": {"base": "org/tiny-sft"},
            "data": {"seed": "s3://data/seed.jsonl", "corpus": "s3://data/corpus.jsonl",
                     "eval": "s3://data/eval.jsonl"},
            "iterations": 1,
            "promptsPerIteration": 20,
            "pairsPerIteration": 10,
            "generation": {"shards": 2, "engine": "transformers"},
            "storage": {"uri": "s3://bucket/runs"},
            "resources": {"image": "synpo-workloads:test", "gpusPerPod": 1, "cpu": "1", "memory": "1Gi",
                          "cpuStages": {"cpu": "1", "memory": "1Gi"}},
            "env": [{"name": "HF_TOKEN", "secretKeyRef": {"name": "hf", "key": "token"}}],
            "backoffLimit": 1,
        },
    }
    doc["spec"].update(spec)
    return doc


class Operator:
    """`synpo operator` as a child process, with its log and metrics endpoint."""

    def __init__(self, kubeconfig: str, namespace: str, log_dir: Path, extra_args: tuple[str, ...] = ()):
        self.kubeconfig = kubeconfig
        self.extra_args = extra_args
        self.namespace = namespace
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.starts = 0

    def start(self) -> None:
        self.port = _free_port()
        self.starts += 1
        log = open(self.log_dir / f"operator-{self.starts}.log", "w")  # noqa: SIM115
        env = {**os.environ, "KUBECONFIG": self.kubeconfig, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "synpo_operator.cli", "operator", "--namespace", self.namespace,
             "--resync-seconds", "1", "--metrics-port", str(self.port), "--health-port", "0",
             # a restarted operator takes over the Lease its killed predecessor held within 5 s, not 15
             "--lease-seconds", "5", "--renew-seconds", "1", *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited: {self.logs()[-3000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1).read()
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("operator did not come up")

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.log_dir.glob("operator-*.log")))

    def metrics(self) -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()


@pytest.fixture(scope="module")
def crds(dev_cluster) -> None:
    kube = dev_cluster.client()
    for path in sorted(CRD_DIR.glob("*.yaml")):
        kube.apply_crd(yaml.safe_load(path.read_text()))


@pytest.fixture
def operator(dev_cluster, crds, namespace, tmp_path) -> Iterator[Operator]:
    op = Operator(dev_cluster.kubeconfig, namespace, tmp_path)
    op.start()
    try:
        yield op
    finally:
        op.stop()
        # the namespace fixture deletes the namespace; release our finalizers so it can go
        kube = dev_cluster.client()
        try:
            for run in kube.get(RUNS.format(ns=namespace)).get("items", []):
                if run["metadata"].get("finalizers"):
                    kube.patch(f"{RUNS.format(ns=namespace)}/{run['metadata']['name']}",
                               {"metadata": {"finalizers": None}})
        except ApiError:
            pass


def apply(kube: KubeClient, ns: str, doc: dict) -> dict:
    return kube.post(RUNS.format(ns=ns), doc)


def get_run(kube: KubeClient, ns: str, name: str) -> dict:
    return kube.get(f"{RUNS.format(ns=ns)}/{name}")


def wait_run(kube: KubeClient, ns: str, name: str, predicate, timeout: float = 90) -> dict:
    return kube.wait_for(f"{RUNS.format(ns=ns)}/{name}", lambda o: predicate(o.get("status") or {}),
                         timeout=timeout, interval=0.25)


def jobs(kube: KubeClient, ns: str, run: str) -> dict[str, dict]:
    items = kube.get(JOBS.format(ns=ns), labelSelector=f"synpo.dev/run={run}")["items"]
    return {j["metadata"]["name"]: j for j in items}


def conditions(status: dict) -> dict[str, dict]:
    return {c["type"]: c for c in status.get("conditions", [])}


def events(kube: KubeClient, ns: str, name: str) -> list[dict]:
    items = kube.get(f"/api/v1/namespaces/{ns}/events")["items"]
    return [e for e in items if e.get("involvedObject", {}).get("name") == name]


def wait_until(what: str, check: Callable[[], object], timeout: float = 30, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def wait_for_event(kube: KubeClient, ns: str, name: str, reason: str, text: str = "") -> dict:
    """Events are posted asynchronously by kopf: wait for one with this reason (and text)."""
    return wait_until(f"event {reason} on {name}", lambda: next(
        (e for e in events(kube, ns, name) if e["reason"] == reason and text in e.get("message", "")), None),
        timeout=15)


# ---- admission: schema and CEL ----------------------------------------------------------------------------

@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d["spec"].update(training={"loss": "ipo"}), "spec.training.loss"),
    (lambda d: d["spec"].update(iterations=0), "spec.iterations"),
    (lambda d: d["spec"].update(iterations=21), "spec.iterations"),
    (lambda d: d["spec"].update(pairsPerIteration=50), "pairsPerIteration must not exceed promptsPerIteration"),
    (lambda d: d["spec"].update(storage={"uri": "s3://b/r", "volume": {"claimName": "ws"}}),
     "set exactly one of storage.volume or storage.uri"),
    (lambda d: d["metadata"].update(name="r" * 41), "at most 40 characters"),
    (lambda d: d["spec"]["resources"].update(gpusPerPod=17), "spec.resources.gpusPerPod"),
    (lambda d: d["spec"].update(unknownField=1), "unknownField"),
])
def test_bad_resources_are_rejected_at_apply_time(kube, crds, namespace, mutate, needle):
    doc = run_doc("bad")
    mutate(doc)
    with pytest.raises(ApiError) as err:
        kube.post(RUNS.format(ns=namespace), doc, fieldValidation="Strict")
    assert err.value.status in (400, 422), err.value
    assert needle in str(err.value.body), err.value.body


def test_immutable_fields_after_creation(kube, crds, namespace):
    created = apply(kube, namespace, run_doc("immutable", suspend=True))
    path = f"{RUNS.format(ns=namespace)}/immutable"
    with pytest.raises(ApiError) as err:
        kube.patch(path, {"spec": {"model": {"base": "org/other"}}})
    assert err.value.status == 422 and "model is immutable" in str(err.value.body)
    with pytest.raises(ApiError) as err:
        kube.patch(path, {"spec": {"iterations": 0}})
    assert err.value.status == 422
    # raising iterations is allowed
    kube.patch(path, {"spec": {"iterations": 2}})
    assert created["metadata"]["name"] == "immutable"


# ---- the operator -------------------------------------------------------------------------------------------

def test_run_to_success_with_status_events_and_metrics(kube, operator, namespace):
    # pods run 1.1 s, so every GPU stage shows GPU time at the 1 s resolution of pod timestamps
    apply(kube, namespace, run_doc("happy", pods={"*": {"synpo.dev/fake-duration": "1100ms"}}))
    running = wait_run(kube, namespace, "happy", lambda s: s.get("phase") == "Running" and s.get("stages"))
    st = running["status"]
    assert st["observedGeneration"] == running["metadata"]["generation"]
    assert st["startTime"] and st["artifacts"] == f"s3://bucket/runs/{namespace}/happy"
    assert conditions(st)["Ready"]["reason"] == "StageRunning"
    deadline = time.monotonic() + 10
    while 'synpo_runs{phase="Running"} 1.0' not in (text := operator.metrics()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert 'synpo_runs{phase="Running"} 1.0' in text
    assert f'synpo_run_iteration{{namespace="{namespace}",run="happy"}}' in text

    done = wait_run(kube, namespace, "happy", lambda s: s.get("phase") in ("Succeeded", "Failed"), timeout=120)
    st = done["status"]
    assert st["phase"] == "Succeeded", st
    assert conditions(st)["Ready"]["status"] == "True" and conditions(st)["Succeeded"]["status"] == "True"
    assert st["completionTime"] >= st["startTime"]
    stages = {s["name"]: s for s in st["stages"]}
    assert len(stages) == 10 and all(s["phase"] == "Succeeded" for s in stages.values())
    assert stages["i1-pairs"]["result"]["pairsKept"] == 7
    # Indexed Job: both shards reported, counts summed
    assert stages["i1-base-responses"]["result"]["shards"] == 2
    assert stages["i1-base-responses"]["result"]["rows"] == 20
    iterations = {i["index"]: i for i in st["iterations"]}
    assert iterations[1]["pairsKept"] == 7 and iterations[1]["winRate"] == 0.625
    assert iterations[1]["model"] == f"s3://bucket/runs/{namespace}/happy/iter-1/train/model"
    assert iterations[1]["gpuSeconds"] > 0
    assert st["latestWinRate"] == 0.625

    # the Jobs: owned by the run, labelled, Indexed where sharded, secrets by reference
    run_uid = done["metadata"]["uid"]
    all_jobs = jobs(kube, namespace, "happy")
    assert len(all_jobs) == 10
    for job in all_jobs.values():
        owner = job["metadata"]["ownerReferences"][0]
        assert owner["uid"] == run_uid and owner["controller"] is True
        assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "synpo-operator"
    refine = all_jobs["happy-i1-refine"]
    assert refine["spec"]["completionMode"] == "Indexed" and refine["spec"]["completions"] == 2
    env = {e["name"]: e for e in refine["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}

    wait_for_event(kube, namespace, "happy", "RunSucceeded")  # events are posted after the status write
    started = " ".join(e["message"] for e in events(kube, namespace, "happy") if e["reason"] == "StageStarted")
    assert all(f"{key} (Job happy-{key})" in started for key in stages)  # one Event per reconcile, not per stage
    assert any(e["reason"] == "StageSucceeded" for e in events(kube, namespace, "happy"))

    deadline = time.monotonic() + 10
    while True:  # metrics follow the reconcile that wrote the status
        text = operator.metrics()
        if 'synpo_runs{phase="Succeeded"} 1.0' in text or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert 'synpo_runs{phase="Succeeded"} 1.0' in text
    assert f'synpo_pairs_kept{{iteration="1",namespace="{namespace}",run="happy"}} 7.0' in text
    assert f'synpo_win_rate{{against="M0",iteration="1",namespace="{namespace}",run="happy"}} 0.625' in text
    assert 'synpo_stage_duration_seconds_count{outcome="Succeeded",stage="train"} 1.0' in text
    assert 'synpo_stage_gpu_seconds_total{stage="train"}' in text
    assert 'name="hf"' not in text and "secretKeyRef" not in text


def test_pod_failure_is_retried_then_fails_the_run(kube, operator, namespace):
    pods = {"keywords": {"synpo.dev/fake-exit-code": "1",
                         "synpo.dev/fake-termination-message": '{"error": "corpus: line 3 is not JSON"}'}}
    apply(kube, namespace, run_doc("flaky", pods=pods, backoffLimit=1))
    done = wait_run(kube, namespace, "flaky", lambda s: s.get("phase") == "Failed", timeout=90)
    st = done["status"]
    failed = conditions(st)["Failed"]
    assert failed["status"] == "True" and failed["reason"] == "StageFailed"
    assert "i0-keywords" in failed["message"] and "BackoffLimitExceeded" in failed["message"]
    assert "exited with code 1" in failed["message"] and "line 3 is not JSON" in failed["message"]
    stage = {s["name"]: s for s in st["stages"]}["i0-keywords"]
    assert stage["phase"] == "Failed" and stage["attempts"] == 2  # one retry (backoffLimit 1)
    job_pods = kube.get(PODS.format(ns=namespace), labelSelector="synpo.dev/stage-key=i0-keywords")["items"]
    assert len(job_pods) == 2
    # no Job is left active, the failed one stays for inspection, and nothing new starts
    names = set(jobs(kube, namespace, "flaky"))
    assert "flaky-i0-keywords" in names and "flaky-i0-prompt-generator" not in names
    time.sleep(2)
    left = jobs(kube, namespace, "flaky")
    assert set(left) == names
    for job in left.values():
        assert any(c["type"] in ("Complete", "Failed") and c["status"] == "True"
                   for c in job["status"].get("conditions", [])), job["metadata"]["name"]
    wait_for_event(kube, namespace, "flaky", "StageFailed")


def test_bad_input_exit_code_fails_fast(kube, operator, namespace):
    pods = {"keywords": {"synpo.dev/fake-exit-code": "2"}}
    apply(kube, namespace, run_doc("badinput", pods=pods, backoffLimit=3))
    done = wait_run(kube, namespace, "badinput", lambda s: s.get("phase") == "Failed", timeout=60)
    assert "PodFailurePolicy" in conditions(done["status"])["Failed"]["message"]
    job_pods = kube.get(PODS.format(ns=namespace), labelSelector="synpo.dev/stage-key=i0-keywords")["items"]
    assert len(job_pods) == 1  # exit code 2: no retry


def test_disruption_is_not_counted_as_failure(kube, operator, namespace):
    pods = {"keywords": {"synpo.dev/fake-hold": "true"}}
    apply(kube, namespace, run_doc("evicted", pods=pods, backoffLimit=0))
    selector = "synpo.dev/stage-key=i0-keywords"

    def running_pods():
        return [p for p in kube.get(PODS.format(ns=namespace), labelSelector=selector)["items"]
                if p.get("status", {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]

    deadline = time.monotonic() + 60
    while not running_pods():
        assert time.monotonic() < deadline, "keywords pod never ran"
        time.sleep(0.2)
    victim = running_pods()[0]["metadata"]["name"]
    kube.post(f"{PODS.format(ns=namespace)}/{victim}/eviction",
              {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": victim, "namespace": namespace}})
    # a replacement pod starts although backoffLimit is 0: the eviction did not count
    deadline = time.monotonic() + 60
    while True:
        fresh = [p for p in running_pods() if p["metadata"]["name"] != victim]
        if fresh:
            break
        assert time.monotonic() < deadline, "no replacement pod after the eviction"
        time.sleep(0.2)
    job = jobs(kube, namespace, "evicted")["evicted-i0-keywords"]
    assert not any(c["type"] == "Failed" for c in job["status"].get("conditions", []))
    # let the replacement finish
    kube.patch(f"{PODS.format(ns=namespace)}/{fresh[0]['metadata']['name']}",
               {"metadata": {"annotations": {"synpo.dev/fake-hold": None}}})
    wait_run(kube, namespace, "evicted",
             lambda s: any(x["name"] == "i0-keywords" and x["phase"] == "Succeeded" for x in s.get("stages", [])),
             timeout=60)
    st = get_run(kube, namespace, "evicted")["status"]
    assert st["phase"] in ("Running", "Succeeded")
    assert {s["name"]: s for s in st["stages"]}["i0-keywords"]["attempts"] == 1


def test_operator_killed_mid_run_resumes_without_duplicates(kube, operator, namespace):
    audit = JobLedger(kube, namespace)
    slow = {"*": {"synpo.dev/fake-duration": "1500ms"}}
    apply(kube, namespace, run_doc("restart", pods=slow))
    wait_run(kube, namespace, "restart",
             lambda s: sum(x["phase"] == "Succeeded" for x in s.get("stages", [])) >= 2, timeout=60)
    before = {n: j["metadata"]["uid"] for n, j in jobs(kube, namespace, "restart").items()}
    operator.kill9()
    time.sleep(3)  # Jobs keep going without the operator
    operator.start()
    done = wait_run(kube, namespace, "restart", lambda s: s.get("phase") in ("Succeeded", "Failed"), timeout=120)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    seen = audit.stop()
    after = {n: j["metadata"]["uid"] for n, j in jobs(kube, namespace, "restart").items()}
    assert len(after) == 10
    assert all(after[n] == uid for n, uid in before.items()), "a Job existing before the kill was replaced"
    assert all(len(uids) == 1 for uids in seen.values()), f"Jobs created twice: {seen}"
    created = [line for line in operator.logs().splitlines() if "created Job for stage" in line]
    stages = [line.rsplit(" ", 1)[-1] for line in created]
    assert len(stages) == len(set(stages)), created


def test_suspend_resume_and_delete(kube, operator, namespace):
    hold = {"prompt-generator": {"synpo.dev/fake-hold": "true"}, "evaluate": {"synpo.dev/fake-hold": "true"},
            "improver": {"synpo.dev/fake-hold": "true"}}
    apply(kube, namespace, run_doc("pausable", pods=hold))
    path = f"{RUNS.format(ns=namespace)}/pausable"
    wait_run(kube, namespace, "pausable",
             lambda s: any(x["name"] == "i0-keywords" and x["phase"] == "Succeeded" for x in s.get("stages", []))
             and any(x["name"] == "i0-prompt-generator" for x in s.get("stages", [])))
    keywords_uid = jobs(kube, namespace, "pausable")["pausable-i0-keywords"]["metadata"]["uid"]

    kube.patch(path, {"spec": {"suspend": True}})
    st = wait_run(kube, namespace, "pausable", lambda s: s.get("phase") == "Suspended")["status"]
    assert conditions(st)["Suspended"]["status"] == "True"
    kube.wait_for(JOBS.format(ns=namespace), lambda o: {j["metadata"]["name"] for j in o["items"]}
                  == {"pausable-i0-keywords"}, timeout=30)
    time.sleep(2)
    assert set(jobs(kube, namespace, "pausable")) == {"pausable-i0-keywords"}  # nothing starts while suspended

    kube.patch(path, {"spec": {"suspend": False}})
    st = wait_run(kube, namespace, "pausable", lambda s: s.get("phase") == "Running"
                  and conditions(s).get("Suspended", {}).get("reason") == "Resumed")["status"]
    kube.wait_for(JOBS.format(ns=namespace), lambda o: "pausable-i0-prompt-generator"
                  in {j["metadata"]["name"] for j in o["items"]}, timeout=30)
    current = jobs(kube, namespace, "pausable")
    assert current["pausable-i0-keywords"]["metadata"]["uid"] == keywords_uid  # finished: never redone
    assert "suspend" not in current["pausable-i0-prompt-generator"]["spec"] or \
        current["pausable-i0-prompt-generator"]["spec"]["suspend"] is False

    kube.delete(path)
    kube.wait_gone(path, timeout=90)  # no finalizer: gone at once
    # the Jobs are owned by the run: garbage collection deletes them
    kube.wait_for(JOBS.format(ns=namespace), lambda o: not o["items"], timeout=60)
    # the operator creates no ConfigMaps (each stage config travels in its Job); none is left behind either
    cms = kube.get(f"/api/v1/namespaces/{namespace}/configmaps", labelSelector="synpo.dev/run=pausable")
    assert not cms["items"]


def test_progress_is_event_driven(kube, dev_cluster, crds, namespace, tmp_path):
    """With resyncs an hour apart, every stage after the first still starts as soon as the one before it
    finished: Job events drive the run. Runs carry no finalizer."""
    op = Operator(dev_cluster.kubeconfig, namespace, tmp_path, extra_args=("--resync-seconds", "3600"))
    op.start()
    try:
        apply(kube, namespace, run_doc("evented", pods={"*": {"synpo.dev/fake-duration": "100ms"}}))
        done = wait_run(kube, namespace, "evented", lambda s: s.get("phase") in ("Succeeded", "Failed"), timeout=120)
        assert done["status"]["phase"] == "Succeeded"
        assert not done["metadata"].get("finalizers")
    finally:
        op.stop()


def test_a_burst_of_new_runs_gets_first_jobs_before_anything_else(kube, dev_cluster, crds, namespace, tmp_path):
    """One worker, 24 runs applied at once: while new runs wait, a new run gets one Job; its other ready
    stages, its first status write (with the startTime of its first reconcile) and one StageStarted Event
    naming all three come with its next reconcile. Nothing is created twice and nothing is lost."""
    from concurrent.futures import ThreadPoolExecutor

    from synpo_operator.clock import parse_time

    op = Operator(dev_cluster.kubeconfig, namespace, tmp_path, extra_args=("--workers", "1"))
    op.start()
    try:
        names = [f"burst-{i:02d}" for i in range(24)]
        docs = [run_doc(n, pods={"*": {"synpo.dev/fake-hold": "true"}}) for n in names]
        ledger = JobLedger(kube, namespace)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda doc: apply(kube, namespace, doc), docs))
        for name in names:
            wait_run(kube, namespace, name, lambda s: len(s.get("stages") or []) == 3, timeout=120)
        deferred = sum(float(line.rsplit(" ", 1)[1]) for line in op.metrics().splitlines()
                       if line.startswith("synpo_burst_deferrals_total"))
        assert deferred >= 1, "no new run waited for the single worker: the burst path was not taken"
        for name in names:
            run_jobs = jobs(kube, namespace, name)
            assert sorted(run_jobs) == [f"{name}-i0-evaluate", f"{name}-i0-keywords", f"{name}-i1-improver"]
            first_job = min(parse_time(j["metadata"]["creationTimestamp"]) for j in run_jobs.values())
            status = get_run(kube, namespace, name)["status"]
            assert parse_time(status["startTime"]) <= first_job, (status["startTime"], first_job)
            assert status["phase"] == "Running"
            started = wait_for_event(kube, namespace, name, "StageStarted")
            assert started["message"].count("(Job ") == 3, started["message"]  # one Event, the held one merged in
            assert len([e for e in events(kube, namespace, name) if e["reason"] == "StageStarted"]) == 1
        ledger.stop()
        assert not ledger.duplicated(), "a Job was created twice"
    finally:
        op.stop()


def test_invalid_spec_the_api_server_cannot_see(kube, operator, namespace):
    apply(kube, namespace, run_doc("localpath", storage={"uri": "./runs"}))
    st = wait_run(kube, namespace, "localpath", lambda s: s.get("phase") == "Failed")["status"]
    failed = conditions(st)["Failed"]
    assert failed["reason"] == "InvalidSpec" and "spec.storage.uri" in failed["message"]
    rv = get_run(kube, namespace, "localpath")["metadata"]["resourceVersion"]
    time.sleep(3)  # several resyncs: no status churn, no Jobs
    assert get_run(kube, namespace, "localpath")["metadata"]["resourceVersion"] == rv
    assert not jobs(kube, namespace, "localpath")


def test_ttl_after_finished_deletes_the_run(kube, operator, namespace):
    apply(kube, namespace, run_doc("ttl", ttlSecondsAfterFinished=2))
    path = f"{RUNS.format(ns=namespace)}/ttl"
    wait_run(kube, namespace, "ttl", lambda s: s.get("phase") == "Succeeded", timeout=120)
    # TTL 2 s, then a resync pass (1 s here); on a loaded 2-core CI machine 30 s once proved too tight.
    kube.wait_gone(path, timeout=90)
    kube.wait_for(JOBS.format(ns=namespace), lambda o: not o["items"], timeout=30)


@pytest.mark.parametrize("example", ["cluster-llama3.yaml", "cluster-llama3-70b.yaml"])
def test_manifests_are_accepted_by_the_api_server(kube, crds, namespace, example):
    """Every object `synpo plan --manifests --all` renders passes server-side validation (dry run); a JobSet's
    Job (the 70B example's training stages: RDMA resource, Multus annotation, IPC_LOCK) as a Job."""
    from synpo_operator.api.loader import parse_resource
    from synpo_operator.executors.manifests import render_run_manifests

    doc = yaml.safe_load((ROOT / "examples" / example).read_text())
    doc["metadata"]["namespace"] = namespace
    kinds = set()
    for manifest in render_run_manifests(parse_resource(doc), all_stages=True):
        manifest = copy.deepcopy(manifest)
        manifest["metadata"]["ownerReferences"][0]["uid"] = "00000000-0000-0000-0000-000000000000"
        kinds.add(manifest["kind"])
        if manifest["kind"] == "JobSet":
            manifest = {"apiVersion": "batch/v1", "kind": "Job", "metadata": manifest["metadata"],
                        "spec": manifest["spec"]["replicatedJobs"][0]["template"]["spec"]}
        assert manifest["kind"] == "Job"  # one object per stage: the Job carries its stage config
        kube.post(JOBS.format(ns=namespace), manifest, dryRun="All", fieldValidation="Strict")
    assert kinds == ({"Job", "JobSet"} if "70b" in example else {"Job"})
