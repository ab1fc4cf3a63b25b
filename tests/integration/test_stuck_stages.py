"""Stuck stages on the real control plane: the API server refusing pods (a missing PriorityClass), the real
scheduler finding no node (a GPU resource no node has, a node affinity no node matches, a missing PVC), and the
kubelet's image pull and container config errors (kwok plays kubelet: it pulls no image and reads no Secret, so
the `synpo.dev/fake-waiting-reason` annotation makes it report the waiting state a kubelet would).

Each: within a minute the run has the StageStuck condition and an Event with the cause's own message; after
spec.stuckPodTimeoutSeconds the stage's Job is failed with that message and the run fails (no retry: a new
attempt's pods would meet the same cause). The operator runs with a 10-minute resync, so all of it is driven by
the pod, Job and Event watches and by the reconcile's own timer, never by polling.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator

import pytest

from synpo_devcluster.client import KubeClient
from synpo_operator.executors.stuck import PREFLIGHT_GRACE_SECONDS

from .test_operator import (  # noqa: F401 - fixtures
    PODS,
    Operator,
    apply,
    conditions,
    crds,
    events,
    get_run,
    jobs,
    run_doc,
    wait_for_event,
    wait_run,
    wait_until,
)

TIMEOUT = 15
"""spec.stuckPodTimeoutSeconds of the runs that are meant to fail."""


@pytest.fixture
def operator(dev_cluster, crds, namespace, tmp_path) -> Iterator[Operator]:  # noqa: F811
    op = Operator(dev_cluster.kubeconfig, namespace, tmp_path, extra_args=("--resync-seconds", "600"))
    op.start()
    try:
        yield op
    finally:
        op.stop()


def stuck_condition(kube: KubeClient, ns: str, name: str, reason: str, text: str, since: float) -> dict:
    """Wait (a minute at most after `since`) for StageStuck True with this reason and text in its message."""
    status = wait_run(kube, ns, name, lambda s: (c := conditions(s).get("StageStuck")) is not None
                      and c["status"] == "True" and c["reason"] == reason and text in c["message"],
                      timeout=max(1.0, 60 - (time.monotonic() - since)))["status"]
    assert time.monotonic() - since < 60
    return conditions(status)["StageStuck"]


def fails_with(kube: KubeClient, ns: str, name: str, text: str) -> dict:
    """The run fails within TIMEOUT (+ slack) with `text` in its Failed condition and a failed stage's message."""
    status = wait_run(kube, ns, name, lambda s: s.get("phase") == "Failed", timeout=TIMEOUT + 45)["status"]
    assert text in conditions(status)["Failed"]["message"]
    failed = [s for s in status["stages"] if s["phase"] == "Failed"]
    assert failed and all(text in s["message"] and f"stuckPodTimeoutSeconds is {TIMEOUT}" in s["message"]
                          for s in failed), failed
    assert conditions(status)["StageStuck"]["status"] == "False"
    wait_for_event(kube, ns, name, "StageFailed", text)
    return status


def test_refused_pods_missing_priority_class(kube, operator, namespace):  # noqa: F811
    fixed, missing = f"synpo-test-{uuid.uuid4().hex[:8]}", f"synpo-missing-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    apply(kube, namespace, run_doc("later", resources={"image": "synpo-workloads:test", "gpusPerPod": 1,
                                                       "priorityClassName": fixed}))
    apply(kube, namespace, run_doc("never", stuckPodTimeoutSeconds=TIMEOUT,
                                   resources={"image": "synpo-workloads:test", "gpusPerPod": 1,
                                              "priorityClassName": missing}))
    needle = f"no PriorityClass with name {fixed} was found"
    cond = stuck_condition(kube, namespace, "later", "PodCreationRefused", needle, start)
    assert re.search(r"stage (i\d-[a-z-]+) is stuck \(PodCreationRefused\): Job later-\1 cannot create pods: "
                     r"Error creating: pods \"later-\1-[-0-9a-z]*\" is forbidden: no PriorityClass", cond["message"]), cond
    wait_for_event(kube, namespace, "later", "PodCreationRefused", needle)
    series = f'synpo_run_stuck{{namespace="{namespace}",reason="PodCreationRefused",run="later"}} 1.0'
    wait_until("the stuck metric", lambda: series in operator.metrics(), timeout=15)
    # the cause goes away: the Job controller's next try creates the pods and the condition clears
    kube.post("/apis/scheduling.k8s.io/v1/priorityclasses",
              {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": fixed},
               "value": 1000})
    try:
        status = wait_run(kube, namespace, "later", lambda s: conditions(s).get("StageStuck", {}).get("status")
                          == "False", timeout=60)["status"]
        assert conditions(status)["StageStuck"]["reason"] == "NotStuck" and status["phase"] != "Failed"
        wait_until("the stuck metric gone", lambda: 'run="later"' not in "".join(
            line for line in operator.metrics().splitlines() if line.startswith("synpo_run_stuck{")), timeout=15)
    finally:
        kube.delete_if_exists(f"/apis/scheduling.k8s.io/v1/priorityclasses/{fixed}")
    # the other run's cause stays: it fails after its stuckPodTimeoutSeconds, its Jobs kept (Failed)
    fails_with(kube, namespace, "never", f"no PriorityClass with name {missing} was found")
    refused = jobs(kube, namespace, "never")["never-i0-preflight"]  # the first stage, whose pods cannot start
    assert refused["spec"]["activeDeadlineSeconds"] == 1
    assert "no PriorityClass" in refused["metadata"]["annotations"]["synpo.dev/stuck-failure"]


def test_unschedulable_pods(kube, operator, namespace):  # noqa: F811
    start = time.monotonic()
    # GPU stages ask for a GPU resource no node has (the CPU-only keywords stage runs)
    apply(kube, namespace, run_doc("nogpu", stuckPodTimeoutSeconds=TIMEOUT, resources={
        "image": "synpo-workloads:test", "gpusPerPod": 1, "gpuResourceName": "amd.com/gpu"}))
    # a node affinity no node matches (the GPU model of examples/cluster-llama3.yaml)
    apply(kube, namespace, run_doc("affinity", resources={
        "image": "synpo-workloads:test", "gpusPerPod": 1, "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3"]}]}]}}}}))
    # the workspace PVC does not exist
    apply(kube, namespace, run_doc("nopvc", storage={"volume": {"claimName": "synpo-workspace"}}))
    cond = stuck_condition(kube, namespace, "nogpu", "Unschedulable", "Insufficient amd.com/gpu", start)
    # a GPU stage (which one comes first depends on timing), its pod, the scheduler's words
    assert re.search(r"stage (i\d-[a-z-]+) is stuck \(Unschedulable\): pod nogpu-\1-[-0-9a-z]+ cannot be "
                     r"scheduled: 0/1 nodes are available: .*Insufficient amd.com/gpu", cond["message"]), cond
    wait_for_event(kube, namespace, "nogpu", "Unschedulable", "Insufficient amd.com/gpu")
    stuck_condition(kube, namespace, "affinity", "Unschedulable", "didn't match Pod's node affinity/selector", start)
    wait_for_event(kube, namespace, "affinity", "Unschedulable", "node affinity")
    stuck_condition(kube, namespace, "nopvc", "Unschedulable", 'persistentvolumeclaim "synpo-workspace" not found',
                    start)
    status = fails_with(kube, namespace, "nogpu", "Insufficient amd.com/gpu")
    assert {s["name"]: s["phase"] for s in status["stages"]}["i0-keywords"] == "Succeeded"
    # the Job controller fails the stuck Jobs (DeadlineExceeded) and removes their pending pods; the Jobs of
    # stages not stuck long enough yet are deleted with the failed run, as always
    failed = {s["name"] for s in status["stages"] if s["phase"] == "Failed"}

    def cleaned_up() -> bool:
        left = jobs(kube, namespace, "nogpu")
        pending = kube.get(PODS.format(ns=namespace), labelSelector="synpo.dev/run=nogpu")["items"]
        return (all(any(c["type"] == "Failed" and c["status"] == "True" and c.get("reason") == "DeadlineExceeded"
                        for c in (left[f"nogpu-{key}"].get("status") or {}).get("conditions") or [])
                    for key in failed)
                and not [p for p in pending if p["status"].get("phase") == "Pending"])

    wait_until("the stuck Jobs failed and their pods gone", cleaned_up, timeout=30)


def test_missing_secret_container_config_error(kube, operator, namespace):  # noqa: F811
    start = time.monotonic()
    message = 'secret "hf" not found'
    pods = {"keywords": {"synpo.dev/fake-waiting-reason": "CreateContainerConfigError",
                         "synpo.dev/fake-waiting-message": message}}
    apply(kube, namespace, run_doc("nosecret", pods=pods, stuckPodTimeoutSeconds=TIMEOUT))
    cond = stuck_condition(kube, namespace, "nosecret", "ContainerConfigError", message, start)
    assert "container stage: CreateContainerConfigError: secret \"hf\" not found" in cond["message"]
    wait_for_event(kube, namespace, "nosecret", "ContainerConfigError", message)
    fails_with(kube, namespace, "nosecret", message)


def test_a_preflight_pod_without_its_judge_key_fails_the_run_within_the_grace(kube, operator, namespace):  # noqa: F811
    """The pre-flight's pod held by a missing Secret: PreflightFailed after PREFLIGHT_GRACE_SECONDS (the stuck
    timeout is the default 900 s here), naming the judge's apiKeySecretRef and the kubelet's words."""
    field = "spec.evaluation.judges[0].apiKeySecretRef"
    message = 'secret "judge-key" not found'
    start = time.monotonic()
    apply(kube, namespace, run_doc("nokey", evaluation={"judges": [
        {"type": "openai", "endpoint": "http://judge.invalid/v1", "model": "judge",
         "apiKeySecretRef": {"name": "judge-key", "key": "api-key"}}]}, pods={"preflight": {
            "synpo.dev/fake-waiting-reason": "CreateContainerConfigError", "synpo.dev/fake-waiting-message": message}}))
    stuck_condition(kube, namespace, "nokey", "ContainerConfigError", message, start)
    status = wait_run(kube, namespace, "nokey", lambda s: s.get("phase") == "Failed",
                      timeout=PREFLIGHT_GRACE_SECONDS + 45)["status"]
    seconds = time.monotonic() - start
    print(f"\n[missing judge key] apply -> PreflightFailed {seconds:.1f} s (grace {PREFLIGHT_GRACE_SECONDS} s)")
    failed = conditions(status)["Failed"]
    assert failed["reason"] == "PreflightFailed", failed
    assert f"{field}: ContainerConfigError: " in failed["message"] and message in failed["message"], failed
    # the grace runs from the pod's creationTimestamp (whole seconds): it waited, and not for the stuck timeout
    assert PREFLIGHT_GRACE_SECONDS - 1 <= seconds < PREFLIGHT_GRACE_SECONDS + 45
    assert [(s["name"], s["phase"]) for s in status["stages"]] == [("i0-preflight", "Failed")]  # nothing else started
    assert set(jobs(kube, namespace, "nokey")) == {"nokey-i0-preflight"}
    wait_for_event(kube, namespace, "nokey", "PreflightFailed", field)


def test_image_pull_failures(kube, operator, namespace):  # noqa: F811
    start = time.monotonic()
    backoff = 'Back-off pulling image "registry.invalid/synpo:missing"'
    apply(kube, namespace, run_doc("nopull", stuckPodTimeoutSeconds=TIMEOUT, pods={"keywords": {
        "synpo.dev/fake-waiting-reason": "ImagePullBackOff", "synpo.dev/fake-waiting-message": backoff}}))
    apply(kube, namespace, run_doc("badname", pods={"keywords": {
        "synpo.dev/fake-waiting-reason": "InvalidImageName",
        "synpo.dev/fake-waiting-message": 'couldn\'t parse image name "Registry//synpo"'}}))
    stuck_condition(kube, namespace, "nopull", "ImagePullFailed", backoff, start)
    wait_for_event(kube, namespace, "nopull", "ImagePullFailed", backoff)
    # an image name that cannot be parsed fails at once (stuckPodTimeoutSeconds is the default 900 here)
    status = wait_run(kube, namespace, "badname", lambda s: s.get("phase") == "Failed", timeout=30)["status"]
    assert "InvalidImageName" in conditions(status)["Failed"]["message"]
    assert "waiting cannot fix this" in conditions(status)["Failed"]["message"]
    assert time.monotonic() - start < 60
    fails_with(kube, namespace, "nopull", backoff)
    assert get_run(kube, namespace, "nopull")["status"]["phase"] == "Failed"


VAP = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"
VAP_BINDINGS = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"
FORBIDDEN = "example.com/forbidden"


def test_a_job_a_cluster_policy_refuses_fails_the_run_once(kube, operator, namespace):  # noqa: F811
    """A cluster policy (a real ValidatingAdmissionPolicy, in the API server) refuses a stage's Job with 422: the
    run fails with JobRefused naming the stage and the policy's words, once, instead of
    retrying the create forever; a new generation tries again."""
    from synpo_devcluster.client import ApiError

    name = f"synpo-test-{uuid.uuid4().hex[:8]}"
    kube.post(VAP, {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
                    "metadata": {"name": name}, "spec": {
                        "failurePolicy": "Fail",
                        "matchConstraints": {"resourceRules": [{"apiGroups": ["batch"], "apiVersions": ["v1"],
                                                                "operations": ["CREATE"], "resources": ["jobs"]}]},
                        "validations": [{
                            "expression": "!has(object.spec.template.spec.tolerations) || "
                                          f"object.spec.template.spec.tolerations.all(t, !has(t.key) || t.key != '{FORBIDDEN}')",
                            "message": f"tolerations of {FORBIDDEN} are not allowed here"}]}})
    kube.post(VAP_BINDINGS, {"apiVersion": "admissionregistration.k8s.io/v1",
                             "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": name}, "spec": {
                                 "policyName": name, "validationActions": ["Deny"],
                                 "matchResources": {"namespaceSelector": {"matchLabels": {
                                     "kubernetes.io/metadata.name": namespace}}}}})
    try:
        probe = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "probe"}, "spec": {"template": {
            "spec": {"restartPolicy": "Never", "tolerations": [{"key": FORBIDDEN, "operator": "Exists"}],
                     "containers": [{"name": "c", "image": "x"}]}}}}

        def in_force() -> bool:  # the API server's policy informer takes a moment
            try:
                kube.post(f"/apis/batch/v1/namespaces/{namespace}/jobs", probe, dryRun="All")
            except ApiError as err:
                return err.status == 422
            return False

        wait_until("the policy in force", in_force, timeout=30)
        forbidden = [{"key": FORBIDDEN, "operator": "Exists", "effect": "NoSchedule"}]
        doc = run_doc("refused", resources={"image": "synpo-workloads:test", "gpusPerPod": 1, "cpu": "1",
                                            "memory": "1Gi", "tolerations": forbidden,
                                            "cpuStages": {"tolerations": forbidden}})  # every first Job has it
        apply(kube, namespace, doc)
        status = wait_run(kube, namespace, "refused", lambda s: s.get("phase") == "Failed", timeout=60)["status"]
        failed = conditions(status)["Failed"]
        assert failed["reason"] == "JobRefused", failed
        assert re.match(r"stage i0-[a-z-]+: the API server refused its Job \(HTTP 422 Invalid\): ", failed["message"])
        assert f"tolerations of {FORBIDDEN} are not allowed here" in failed["message"]
        # a policy's words name no Job field (the API server's own validation does: tests/unit/test_reconcile.py)
        assert failed["message"].endswith("it names no field the run sets: see docs/troubleshooting.md, "
                                          "'A stage's Job is refused'"), failed["message"]
        wait_for_event(kube, namespace, "refused", "JobRefused", "not allowed here")
        assert jobs(kube, namespace, "refused") == {}
        # nothing retried: the status stays as it is and no second Event comes
        version = get_run(kube, namespace, "refused")["metadata"]["resourceVersion"]
        time.sleep(5)
        assert get_run(kube, namespace, "refused")["metadata"]["resourceVersion"] == version
        assert sum(e.get("count") or 1 for e in events(kube, namespace, "refused") if e["reason"] == "JobRefused") == 1
        # the cluster's policy goes; a new generation (any spec change) starts the run
        kube.delete(f"{VAP_BINDINGS}/{name}")
        wait_until("the policy lifted", lambda: not in_force(), timeout=30)
        kube.patch(f"/apis/synpo.dev/v1alpha1/namespaces/{namespace}/synporuns/refused",
                   {"spec": {"promptsPerIteration": 21}})
        wait_until("the run's first Jobs", lambda: jobs(kube, namespace, "refused"), timeout=60)
    finally:
        kube.delete_if_exists(f"{VAP_BINDINGS}/{name}")
        kube.delete_if_exists(f"{VAP}/{name}")
