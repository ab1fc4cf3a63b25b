"""Faults during a run (issue #8): every disturbed run must end exactly like an undisturbed one — phase
Succeeded, the same stages with the same results (row/pair counts summed over shards: a pair counted twice or
lost would show), the same `pairsTotal` — and no Job may be created twice (every Job uid is recorded).

Faults: one pod failure in every stage; the node going NotReady with its pods evicted (DisruptionTarget);
the operator SIGKILLed 10 times at random points. Control-plane restarts are in test_reliability_control_plane.py.
Figures are printed as `RELIABILITY ...` lines (run with -s to see them; docs/reliability.md collects them).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
import uuid
from datetime import UTC, datetime

import pytest
from reliability.chaos import JobLedger, PodScript, run_summary

from .test_operator import PODS, RUNS, Operator, crds, operator, run_doc, wait_run  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

DONE = ("Succeeded", "Failed")


def finish(kube, ns, name, timeout=180) -> dict:
    return wait_run(kube, ns, name, lambda s: s.get("phase") in DONE, timeout=timeout)


def figure(**kv) -> None:
    print("RELIABILITY " + " ".join(f"{k}={v}" for k, v in kv.items()))


@pytest.fixture(scope="module")
def baseline(dev_cluster, crds, tmp_path_factory) -> dict:  # noqa: F811
    """The undisturbed run (same spec, same fake stage results), once per module."""
    kube = dev_cluster.client()
    ns = f"rel-baseline-{uuid.uuid4().hex[:6]}"
    kube.post("/api/v1/namespaces", {"metadata": {"name": ns, "labels": {"synpo.dev/test": "true"}}})
    kube.wait_for(f"/api/v1/namespaces/{ns}/serviceaccounts/default", lambda _: True, timeout=30)
    op = Operator(dev_cluster.kubeconfig, ns, tmp_path_factory.mktemp("baseline"))
    op.start()
    try:
        kube.post(RUNS.format(ns=ns), run_doc("run"))
        done = finish(kube, ns, "run")
        assert done["status"]["phase"] == "Succeeded", done["status"]
        return run_summary(done)
    finally:
        op.stop()
        with contextlib.suppress(Exception):
            kube.patch(f"{RUNS.format(ns=ns)}/run", {"metadata": {"finalizers": None}})
        kube.delete_if_exists(f"/api/v1/namespaces/{ns}", propagationPolicy="Background")


def assert_like_baseline(done: dict, baseline: dict, ledger: JobLedger) -> None:
    assert done["status"]["phase"] == "Succeeded", done["status"]
    summary = run_summary(done)
    assert summary == baseline, f"disturbed run differs from the undisturbed one:\n{summary}\nvs\n{baseline}"
    seen = ledger.stop()
    assert len(seen) == len(baseline["stages"]), sorted(seen)
    assert not ledger.duplicated(), f"Jobs created twice: {ledger.duplicated()}"


def test_one_pod_failure_in_every_stage_is_retried(kube, operator, namespace, baseline):  # noqa: F811
    """Every stage's first pod exits 1; backoffLimit 1 lets the Job retry it; the run still succeeds."""
    failed: dict[str, str] = {}

    def decide(pod: dict) -> dict:
        key = pod["metadata"]["labels"].get("synpo.dev/stage-key")
        if key not in failed:
            failed[key] = pod["metadata"]["name"]
            return {"synpo.dev/fake-exit-code": "1",
                    "synpo.dev/fake-termination-message": '{"error": "injected fault"}'}
        return {}

    ledger = JobLedger(kube, namespace)
    script = PodScript(kube, namespace, decide)
    kube.post(RUNS.format(ns=namespace), run_doc("podfail", pods={"*": {"synpo.dev/fake-hold": "true"}},
                                                 backoffLimit=1))
    try:
        done = finish(kube, namespace, "podfail", timeout=240)
    finally:
        script.stop()
    assert_like_baseline(done, baseline, ledger)
    assert set(failed) == set(baseline["stages"]), f"not every stage had a failure: {sorted(failed)}"
    stages = {s["name"]: s for s in done["status"]["stages"]}
    assert all(stages[k]["attempts"] >= 2 for k in failed), {k: s["attempts"] for k, s in stages.items()}
    pods = kube.get(PODS.format(ns=namespace))["items"]
    failed_pods = [p for p in pods if p["status"].get("phase") == "Failed"]
    assert len(failed_pods) == len(failed)
    figure(fault="pod-failure-per-stage", injected=len(failed), survived=1, duplicated_jobs=0,
           pairs_total=done["status"]["iterations"][-1]["pairsTotal"])


def _node_path(dev_cluster) -> str:
    return f"/api/v1/nodes/{dev_cluster.node_name}"


def _set_ready(kube, dev_cluster, status: str) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    kube.patch(f"{_node_path(dev_cluster)}/status", {"status": {"conditions": [{
        "type": "Ready", "status": status, "reason": "ReliabilityTest" if status != "True" else "KubeletReady",
        "message": "node unreachable (reliability test)" if status != "True" else "kubelet is ready",
        "lastHeartbeatTime": now, "lastTransitionTime": now}]}}, patch_type="strategic")


def test_node_not_ready_evicts_pods_without_counting_failures(kube, dev_cluster, operator, namespace, baseline):  # noqa: F811
    """The node stops answering (kwok SIGSTOPped, Ready=Unknown, NoExecute taint node.kubernetes.io/unreachable,
    as the node lifecycle controller sets them): the taint manager evicts the running pods (DisruptionTarget),
    then the node comes back. Evictions are not failures (backoffLimit 0 would fail the run otherwise)."""
    from reliability.chaos import component_pid

    tolerate = [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                 "tolerationSeconds": 0},
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                 "tolerationSeconds": 0}]
    doc = run_doc("nodeloss", pods={"*": {"synpo.dev/fake-duration": "3s"}}, backoffLimit=0)
    doc["spec"]["resources"]["tolerations"] = tolerate
    doc["spec"]["resources"]["cpuStages"] = {"tolerations": tolerate}  # keywords is a CPU stage
    ledger = JobLedger(kube, namespace)
    kube.post(RUNS.format(ns=namespace), doc)
    kwok = component_pid(dev_cluster.state_dir, "kwok")
    outages = 0
    evicted: set[str] = set()
    # two outages: while the first stage runs, and while a sharded GPU stage runs
    for target in ("i0-keywords", "i1-base-responses"):
        sel = f"synpo.dev/stage-key={target}"
        kube.wait_for(PODS.format(ns=namespace), lambda o: any(
            p["status"].get("phase") == "Running" for p in o["items"]), timeout=120, labelSelector=sel)
        victims = {p["metadata"]["name"] for p in kube.get(PODS.format(ns=namespace), labelSelector=sel)["items"]
                   if p["status"].get("phase") == "Running"}
        os.killpg(kwok, signal.SIGSTOP)
        try:
            _set_ready(kube, dev_cluster, "Unknown")
            kube.patch(_node_path(dev_cluster), {"spec": {"taints": [{
                "key": "node.kubernetes.io/unreachable", "effect": "NoExecute",
                "timeAdded": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}]}})
            # the taint manager marks the pods (DisruptionTarget) and deletes them
            kube.wait_for(PODS.format(ns=namespace), lambda o, victims=victims: all(
                p["metadata"].get("deletionTimestamp") for p in o["items"] if p["metadata"]["name"] in victims),
                timeout=60, labelSelector=sel)
            time.sleep(2)
        finally:
            os.killpg(kwok, signal.SIGCONT)
            _set_ready(kube, dev_cluster, "True")
            kube.patch(_node_path(dev_cluster), {"spec": {"taints": None}})
        kube.wait_for(_node_path(dev_cluster), lambda n: not n["spec"].get("taints") and any(
            c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"]), timeout=60)
        outages += 1
        evicted |= victims

    done = finish(kube, namespace, "nodeloss", timeout=240)
    assert_like_baseline(done, baseline, ledger)
    stages = {s["name"]: s for s in done["status"]["stages"]}
    assert all(s["attempts"] == 1 for s in stages.values()), {k: s["attempts"] for k, s in stages.items()}
    retries = [float(line.rsplit(" ", 1)[1]) for line in operator.metrics().splitlines()
               if line.startswith("synpo_stage_retries_total{")]
    assert sum(retries) == 0, retries
    figure(fault="node-not-ready", outages=outages, pods_evicted=len(evicted), survived=1, duplicated_jobs=0,
           pairs_total=done["status"]["iterations"][-1]["pairsTotal"])


def test_operator_killed_ten_times_at_random_points(kube, operator, namespace, baseline):  # noqa: F811
    rng = random.Random(int(os.environ.get("SYNPO_CHAOS_SEED", "8")))
    ledger = JobLedger(kube, namespace)
    kube.post(RUNS.format(ns=namespace), run_doc("chaos", pods={"*": {"synpo.dev/fake-duration": "1500ms"}}))
    kills_mid_run = 0
    kill_phases = []
    for _ in range(10):
        time.sleep(rng.uniform(0.0, 2.5))
        phase = (kube.get(f"{RUNS.format(ns=namespace)}/chaos").get("status") or {}).get("phase")
        kill_phases.append(phase)
        kills_mid_run += phase not in DONE
        operator.kill9()
        time.sleep(rng.uniform(0.0, 1.0))
        operator.start()
    done = finish(kube, namespace, "chaos", timeout=240)
    assert_like_baseline(done, baseline, ledger)
    created = [line.rsplit(" ", 1)[-1] for line in operator.logs().splitlines() if "created Job for stage" in line]
    assert sorted(created) == sorted(set(created)) and len(created) == len(baseline["stages"]), created
    assert kills_mid_run >= 5, f"the run finished too early for the kills to matter: {kill_phases}"
    figure(fault="operator-sigkill", kills=10, kills_mid_run=kills_mid_run, survived=1, duplicated_jobs=0,
           pairs_total=done["status"]["iterations"][-1]["pairsTotal"])
