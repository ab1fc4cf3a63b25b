"""Kueue admits the operator's stage Jobs: a real Kueue v0.17 manager (dev-cluster add-on, `addon_kueue`).

One ClusterQueue with room for one training pod's GPU (nominalQuota nvidia.com/gpu: 1) and two runs on it: the
GPU stages of both are admitted one at a time, a higher-priority run preempts the other's running stage, which
goes back to the queue (its run says Queued, with Kueue's message) without counting as a failed attempt, and
both runs succeed. Pods are kwok fakes that finish in 300 ms, except the preempted stage, held until released.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator

import pytest

from synpo_devcluster import addon_kueue
from synpo_devcluster.client import ApiError, KubeClient

from .test_operator import PODS, RUNS, apply, conditions, crds, jobs, operator, run_doc, wait_run  # noqa: F401

KUEUE = "/apis/kueue.x-k8s.io/v1beta2"
GPU = "nvidia.com/gpu"


@pytest.fixture(scope="module")
def kueue(dev_cluster) -> addon_kueue.KueueInfo:
    """Kueue on the shared dev cluster: started (built first, once) when it does not run yet."""
    if not addon_kueue.is_built() and not shutil.which("go"):
        msg = "kueue not built and no Go toolchain on PATH"
        if os.environ.get("SYNPO_REQUIRE_DEV_CLUSTER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return addon_kueue.up(dev_cluster)


@pytest.fixture
def queue(kube: KubeClient, kueue, namespace) -> Iterator[dict[str, str]]:
    """A ResourceFlavor, a ClusterQueue for this namespace only (1 GPU; CPU and memory to spare), a LocalQueue
    and two WorkloadPriorityClasses; the cluster-scoped ones are deleted afterwards."""
    names = {"flavor": f"gpu-{namespace}", "cq": f"cq-{namespace}", "lq": "team",
             "low": f"low-{namespace}", "high": f"high-{namespace}"}
    cluster_objects = [
        ("resourceflavors", {"metadata": {"name": names["flavor"]}, "spec": {}}),
        ("workloadpriorityclasses", {"metadata": {"name": names["low"]}, "value": 10}),
        ("workloadpriorityclasses", {"metadata": {"name": names["high"]}, "value": 1000}),
        ("clusterqueues", {"metadata": {"name": names["cq"]}, "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "preemption": {"withinClusterQueue": "LowerPriority"},
            "resourceGroups": [{"coveredResources": ["cpu", "memory", GPU], "flavors": [{
                "name": names["flavor"], "resources": [
                    {"name": "cpu", "nominalQuota": "32"}, {"name": "memory", "nominalQuota": "64Gi"},
                    {"name": GPU, "nominalQuota": "1"}]}]}]}}),
    ]
    kinds = {"resourceflavors": "ResourceFlavor", "workloadpriorityclasses": "WorkloadPriorityClass",
             "clusterqueues": "ClusterQueue"}
    for plural, obj in cluster_objects:
        kube.post(f"{KUEUE}/{plural}", {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": kinds[plural], **obj})
    kube.post(f"{KUEUE}/namespaces/{namespace}/localqueues", {
        "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
        "metadata": {"name": names["lq"], "namespace": namespace}, "spec": {"clusterQueue": names["cq"]}})
    kube.wait_for(f"{KUEUE}/clusterqueues/{names['cq']}", lambda o: any(
        c["type"] == "Active" and c["status"] == "True" for c in (o.get("status") or {}).get("conditions") or []),
        timeout=30)
    try:
        yield names
    finally:
        # Kueue's finalizers keep them until the namespace's Workloads are gone (the namespace fixture)
        for plural, obj in reversed(cluster_objects):
            kube.delete_if_exists(f"{KUEUE}/{plural}/{obj['metadata']['name']}")


def workloads(kube: KubeClient, ns: str) -> list[dict]:
    return kube.get(f"{KUEUE}/namespaces/{ns}/workloads")["items"]


def admitted_gpu_workloads(kube: KubeClient, ns: str) -> list[str]:
    """Workloads holding GPU quota now (admitted, not finished)."""
    out = []
    for wl in workloads(kube, ns):
        conds = {c["type"]: c["status"] for c in wl.get("status", {}).get("conditions", [])}
        usage = [a.get("resourceUsage", {}) for a in (wl["status"].get("admission") or {}).get(
            "podSetAssignments", [])] if conds.get("QuotaReserved") == "True" else []
        if conds.get("Finished") != "True" and any(GPU in u for u in usage):
            out.append(wl["metadata"]["name"])
    return out


def test_kueue_admits_stages_in_turn_and_preemption_is_not_a_failure(kube, operator, queue, namespace):  # noqa: F811
    # GPU only for the training stages (1 each); the others are CPU pods the queue has room for
    resources = {"image": "synpo-workloads:test", "gpusPerPod": 0, "training": {"gpusPerNode": 1},
                 "cpu": "1", "memory": "1Gi"}
    common = dict(queueName=queue["lq"], resources=resources, generation={"shards": 1, "engine": "transformers"},
                  activeDeadlineSeconds=3600)
    # the low-priority run's improver holds its GPU until released, so the other run must preempt it
    low = run_doc("low", pods={"improver": {"synpo.dev/fake-hold": "true"}},
                  workloadPriorityClassName=queue["low"], **common)
    high = run_doc("high", workloadPriorityClassName=queue["high"], **common)

    seen_admitted: list[int] = []
    seen_low: list[tuple[str, str, str]] = []  # the low run's (phase, Ready reason, Ready message)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                seen_admitted.append(len(admitted_gpu_workloads(kube, namespace)))
                st = kube.get(f"{RUNS.format(ns=namespace)}/low").get("status") or {}
                ready = conditions(st).get("Ready") or {}
                seen_low.append((st.get("phase", ""), ready.get("reason", ""), ready.get("message", "")))
            except ApiError:
                pass
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        apply(kube, namespace, low)
        improver = "synpo.dev/stage-key=i1-improver,synpo.dev/run=low"

        def running_improver() -> list[dict]:
            return [p for p in kube.get(PODS.format(ns=namespace), labelSelector=improver)["items"]
                    if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]

        wait_for(lambda: running_improver(), "low's improver admitted and running", 60)
        first_pod = running_improver()[0]["metadata"]["name"]

        apply(kube, namespace, high)
        # Kueue preempts low's improver: the Job is suspended again, the run says Queued with Kueue's message
        queued = wait_run(kube, namespace, "low", lambda s: "evicted (Preempted)" in " ".join(
            x.get("message") or "" for x in s.get("stages", [])), timeout=60)["status"]
        stage = {s["name"]: s for s in queued["stages"]}["i1-improver"]
        assert stage["phase"] == "Running" and stage["attempts"] == 1, stage
        low_job = jobs(kube, namespace, "low")["low-i1-improver"]
        assert low_job["spec"]["suspend"] is True  # Kueue, not the operator, suspended it
        assert low_job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == queue["low"]

        done = wait_run(kube, namespace, "high", lambda s: s.get("phase") in ("Succeeded", "Failed"), timeout=120)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        high_wl = [w for w in workloads(kube, namespace) if w["metadata"]["name"].startswith("job-high-")]
        assert high_wl and all(w["spec"]["priorityClassRef"]["name"] == queue["high"]
                               and w["spec"]["priority"] == 1000 for w in high_wl)

        # low waits in the queue whenever high holds the GPU: its status said so, with Kueue's words
        low_now = kube.get(f"{RUNS.format(ns=namespace)}/low")["status"]
        assert low_now.get("queuedSeconds", 0) > 0 or "queuedSince" in low_now, low_now

        # release low's improver (its new pod, after re-admission) and let low finish
        def release() -> bool:
            for pod in running_improver():
                if pod["metadata"]["name"] != first_pod:
                    kube.patch(f"{PODS.format(ns=namespace)}/{pod['metadata']['name']}",
                               {"metadata": {"annotations": {"synpo.dev/fake-hold": None}}})
                    return True
            return False

        wait_for(release, "low's improver running again after the preemption", 60)
        done = wait_run(kube, namespace, "low", lambda s: s.get("phase") in ("Succeeded", "Failed"), timeout=120)
    finally:
        stop.set()
        watcher.join(timeout=5)
    st = done["status"]
    assert st["phase"] == "Succeeded", st
    stages = {s["name"]: s for s in st["stages"]}
    assert stages["i1-improver"]["attempts"] == 1  # the preemption was not a failed attempt
    assert conditions(st)["Succeeded"]["status"] == "True" and st["queuedSeconds"] > 0
    # the queue's quota held: never two GPU stages admitted at once, and the GPU was in use
    assert max(seen_admitted) == 1, seen_admitted
    # while every unfinished stage of low waited, its run said Queued, with Kueue's reasons
    queued_msgs = [m for phase, reason, m in seen_low if phase == "Pending" and reason == "Queued"]
    assert any("low-i1-improver: evicted (Preempted): Preempted to accommodate" in m for m in queued_msgs), seen_low
    assert any("insufficient unused quota for nvidia.com/gpu" in m for m in queued_msgs), seen_low


def wait_for(check, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)
    return value
