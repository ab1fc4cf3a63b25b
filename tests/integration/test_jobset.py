"""Training on several nodes through JobSet, against the real JobSet controller (`synpo dev-cluster up --addons
jobset`: built from the Go module proxy on first use, its webhooks served locally) and the real
kube-controller-manager (Jobs, garbage collection); kwok plays kubelet for the pods.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator

import pytest

from synpo_devcluster import addon_jobset
from synpo_devcluster.client import ApiError, KubeClient

from .test_operator import PODS, RUNS, apply, conditions, crds, operator, run_doc, wait_run  # noqa: F401 - fixtures

JOBSETS = "/apis/jobset.x-k8s.io/v1alpha2/namespaces/{ns}/jobsets"
JOBS = "/apis/batch/v1/namespaces/{ns}/jobs"
TRAINING = ("i0-prompt-generator", "i1-improver", "i1-train")


@pytest.fixture
def jobset(dev_cluster) -> None:
    """JobSet installed and its controller running (built on first use, ~10 min on 2 cores; started when
    missing)."""
    if not addon_jobset.is_built() and not shutil.which("go"):
        msg = "the JobSet controller is not built and there is no Go toolchain on PATH"
        if os.environ.get("SYNPO_REQUIRE_DEV_CLUSTER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    addon_jobset.up(dev_cluster)


@pytest.fixture
def no_jobset(dev_cluster, kube) -> Iterator[None]:
    """A cluster without JobSet's API; put back afterwards when it was there."""
    had = addon_jobset.installed(kube)
    if had:
        addon_jobset.remove(kube)
    try:
        yield
    finally:
        if had:
            addon_jobset.up(dev_cluster)


def two_node_run(name: str, **kw) -> dict:
    doc = run_doc(name, **kw)
    doc["spec"]["resources"]["training"] = {"nodes": 2}
    return doc


def jobsets(kube: KubeClient, ns: str, run: str) -> dict[str, dict]:
    items = kube.get(JOBSETS.format(ns=ns), labelSelector=f"synpo.dev/run={run}")["items"]
    return {j["metadata"]["labels"]["synpo.dev/stage-key"]: j for j in items}


def test_several_nodes_without_jobset_api_fail_naming_the_field(no_jobset, kube, operator, namespace):  # noqa: F811
    apply(kube, namespace, two_node_run("nojs"))
    done = wait_run(kube, namespace, "nojs", lambda s: s.get("phase") == "Failed", timeout=30)
    failed = conditions(done["status"])["Failed"]
    assert failed["reason"] == "InvalidSpec"
    assert "spec.resources.training.nodes is 2" in failed["message"]
    assert "no JobSet API (jobset.x-k8s.io/v1alpha2)" in failed["message"] and "nodes: 1" in failed["message"]
    assert kube.get(JOBS.format(ns=namespace))["items"] == []  # nothing was started


def test_jobset_webhooks_are_in_force(jobset, kube, namespace):
    """The add-on's JobSets pass JobSet's own admission (served on a local port): validation and defaulting."""
    js = {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": {"name": "probe"},
          "spec": {"failurePolicy": {"rules": [{"name": "no-restart", "action": "FailJobSet"}]},
                   "replicatedJobs": [{"name": "n", "replicas": 1, "template": {"spec": {"template": {"spec": {
                       "restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}}}]}}
    with pytest.raises(ApiError) as err:
        kube.post(JOBSETS.format(ns=namespace), js)
    assert 'admission webhook "vjobset.kb.io" denied' in str(err.value.body)
    js["spec"]["failurePolicy"]["rules"][0]["name"] = "noRestart"
    out = kube.post(JOBSETS.format(ns=namespace), js, dryRun="All")
    assert out["spec"]["successPolicy"] == {"operator": "All"}  # defaulted by JobSet's mutating webhook


def test_two_nodes_run_through_one_jobset_per_training_stage(jobset, kube, operator, namespace):  # noqa: F811
    apply(kube, namespace, two_node_run("multi"))
    done = wait_run(kube, namespace, "multi", lambda s: s.get("phase") in ("Succeeded", "Failed"), timeout=120)
    st = done["status"]
    assert st["phase"] == "Succeeded", st
    stages = {s["name"]: s for s in st["stages"]}
    assert stages["i1-train"]["result"]["steps"] == 3  # rank 0's summary, not the sum over ranks

    found = jobsets(kube, namespace, "multi")
    assert sorted(found) == sorted(TRAINING)  # exactly one JobSet per training stage, none for the others
    uid = done["metadata"]["uid"]
    for js in found.values():
        owner = js["metadata"]["ownerReferences"][0]
        assert owner["uid"] == uid and owner["kind"] == "SynPORun" and owner["controller"] is True
        assert any(c["type"] == "Completed" and c["status"] == "True" for c in js["status"]["conditions"])
        name = js["metadata"]["name"]
        pods = kube.get(PODS.format(ns=namespace), labelSelector=f"jobset.sigs.k8s.io/jobset-name={name}")["items"]
        assert len(pods) == 2  # one pod per node
        ranks = sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods)
        assert ranks == ["0", "1"]
        env = {e["name"]: e for e in pods[0]["spec"]["containers"][0]["env"]}
        assert env["PET_NNODES"]["value"] == "2"
        assert env["PET_MASTER_ADDR"]["value"] == f"{name}-node-0-0.{name}"
        assert {p["spec"]["hostname"] for p in pods} == {f"{name}-node-0-0", f"{name}-node-0-1"}
        assert all(p["spec"]["subdomain"] == name for p in pods)  # JobSet's headless Service
    # the other stages still run as Jobs owned by the run; JobSet's Jobs are owned by their JobSet
    own_jobs = [j for j in kube.get(JOBS.format(ns=namespace))["items"]
                if j["metadata"]["ownerReferences"][0]["kind"] == "SynPORun"]
    assert len(own_jobs) == len(stages) - len(TRAINING)

    # deleting the run deletes its JobSets (garbage collection by the controller-manager) and their Jobs
    kube.delete(f"{RUNS.format(ns=namespace)}/multi", propagationPolicy="Background")
    for js in found.values():
        kube.wait_gone(f"{JOBSETS.format(ns=namespace)}/{js['metadata']['name']}", timeout=60)
    kube.wait_for(JOBS.format(ns=namespace), lambda o: not o["items"], timeout=60)


def test_bad_input_fails_the_jobset_without_restart(jobset, kube, operator, namespace):  # noqa: F811
    pods = {"prompt-generator": {"synpo.dev/fake-exit-code": "2", "synpo.dev/fake-termination-message":
                                 json.dumps({"error": "seed: no rows"})}}
    apply(kube, namespace, two_node_run("badin", pods=pods, backoffLimit=3))
    done = wait_run(kube, namespace, "badin", lambda s: s.get("phase") == "Failed", timeout=90)
    failed = conditions(done["status"])["Failed"]
    assert "i0-prompt-generator" in failed["message"], failed
    assert "exited with code 2" in failed["message"] and "seed: no rows" in failed["message"]
    js = jobsets(kube, namespace, "badin")["i0-prompt-generator"]
    assert js["status"].get("restarts", 0) == 0  # FailJobSet on the Job's PodFailurePolicy reason
    assert js["spec"]["failurePolicy"]["maxRestarts"] == 3


def test_pod_failure_restarts_the_whole_group_up_to_backoff_limit(jobset, kube, operator, namespace):  # noqa: F811
    pods = {"prompt-generator": {"synpo.dev/fake-exit-code": "1"}}
    apply(kube, namespace, two_node_run("flaky", pods=pods, backoffLimit=1))
    done = wait_run(kube, namespace, "flaky", lambda s: s.get("phase") == "Failed", timeout=90)
    failed = conditions(done["status"])["Failed"]
    assert "i0-prompt-generator" in failed["message"] and "exited with code 1" in failed["message"], failed
    js = jobsets(kube, namespace, "flaky")["i0-prompt-generator"]
    assert js["status"]["restarts"] == 1  # one restart of both pods (backoffLimit 1), then failed
    stage = {s["name"]: s for s in done["status"]["stages"]}["i0-prompt-generator"]
    assert stage["phase"] == "Failed" and stage["attempts"] == 2  # the group ran twice
