"""Training on several nodes as a JobSet: rendering (executors/jobset_manifest.py, manifests.render_stage) and
reading its status into a stage record (executors/job_status.jobset_record). Pure; the real JobSet controller is
exercised in tests/integration/test_jobset.py."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

import yaml

from synpo_operator.api.loader import parse_resource
from synpo_operator.api.results import BAD_INPUT_EXIT_CODE
from synpo_operator.executors.job_status import jobset_record
from synpo_operator.executors.jobset_manifest import MAX_NAME, jobset_name, leader_address
from synpo_operator.executors.manifests import LABEL_QUEUE, render_job, render_run_manifests, render_stage
from synpo_operator.plan import stage_graph
from synpo_operator.plan.planner import StagePhase, Start
from synpo_operator.reconcile import reconcile, status_differs, status_patch

from .conftest import ROOT
from .test_reconcile import RESULTS, Harness

CLUSTER = yaml.safe_load((ROOT / "examples" / "cluster-llama3.yaml").read_text())
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def run_of(nodes: int, name: str = "llama3-synpo", **spec):
    doc = copy.deepcopy(CLUSTER)
    doc["metadata"]["name"] = name
    doc["spec"]["resources"]["training"] = {"nodes": nodes, "gpusPerNode": 8}
    doc["spec"].update(spec)
    return parse_resource(doc)


def node_of(run, key):
    return next(n for n in stage_graph(run.spec) if n.key == key)


def test_one_node_renders_jobs_exactly_as_before():
    run = run_of(1)
    for node in stage_graph(run.spec):
        assert render_stage(run, node) == render_job(run, node)


def test_several_nodes_make_a_jobset_for_training_stages_only():
    run = run_of(2)
    kinds = {m["metadata"]["labels"]["synpo.dev/stage"]: m["kind"] for m in render_run_manifests(run, all_stages=True)}
    assert {s for s, k in kinds.items() if k == "JobSet"} == {"prompt-generator", "improver", "train"}
    assert {k for s, k in kinds.items() if s not in ("prompt-generator", "improver", "train")} == {"Job"}


def test_jobset_wraps_the_stage_job_one_pod_per_node():
    run = run_of(4, backoffLimit=2)
    node = node_of(run, "i1-train")
    job = render_job(run, node)
    js = render_stage(run, Start(node))
    assert js["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and js["kind"] == "JobSet"
    name = js["metadata"]["name"]
    assert name == job["metadata"]["name"] == "llama3-synpo-i1-train"
    assert js["metadata"]["ownerReferences"] == job["metadata"]["ownerReferences"]
    assert js["metadata"]["annotations"] == job["metadata"]["annotations"]  # attempt, GPUs, config hash
    [rjob] = js["spec"]["replicatedJobs"]
    assert rjob["replicas"] == 1
    spec = rjob["template"]["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    assert spec["backoffLimit"] == 0  # any failed rank fails the Job: JobSet restarts the whole group
    assert spec["podFailurePolicy"] == job["spec"]["podFailurePolicy"]
    assert [BAD_INPUT_EXIT_CODE] in [r.get("onExitCodes", {}).get("values") for r in spec["podFailurePolicy"]["rules"]]
    assert js["spec"]["failurePolicy"]["maxRestarts"] == 2
    assert js["spec"]["failurePolicy"]["rules"] == [
        {"name": "noRestart", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy", "DeadlineExceeded"]}]
    assert js["spec"]["network"]["enableDNSHostnames"] is True and js["spec"]["network"]["subdomain"] == name

    # the pod is the Job's pod plus torchrun's rendezvous env
    pod, job_pod = spec["template"], job["spec"]["template"]
    assert pod["metadata"] == job_pod["metadata"]
    c, jc = pod["spec"]["containers"][0], job_pod["spec"]["containers"][0]
    assert {k: v for k, v in c.items() if k not in ("env", "ports")} == {
        k: v for k, v in jc.items() if k != "env"}
    assert c["env"][:len(jc["env"])] == jc["env"]
    env = {e["name"]: e for e in c["env"][len(jc["env"]):]}
    assert env["PET_NNODES"]["value"] == "4"
    assert env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert env["PET_MASTER_ADDR"]["value"] == f"{name}-node-0-0.{name}" == leader_address(name)
    assert env["PET_MASTER_PORT"]["value"] == "29500"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    # every node runs torchrun with one process per GPU; the rendezvous comes from the env, not --standalone
    assert c["command"][:2] == ["torchrun", "--nproc-per-node=8"] and "--standalone" not in c["command"]


def test_kueue_suspends_the_jobset_not_its_job():
    run = run_of(2, queueName="team-a")
    js = render_stage(run, node_of(run, "i0-prompt-generator"))
    assert js["spec"]["suspend"] is True and js["metadata"]["labels"][LABEL_QUEUE] == "team-a"
    assert "suspend" not in js["spec"]["replicatedJobs"][0]["template"]["spec"]
    run = run_of(2, queueName=None)
    js = render_stage(run, node_of(run, "i0-prompt-generator"))
    assert "suspend" not in js["spec"] and LABEL_QUEUE not in js["metadata"]["labels"]


def test_long_names_are_shortened_so_pod_names_fit_63():
    run = run_of(128, name="r" * 40)
    js = render_stage(run, node_of(run, "i0-prompt-generator"))
    name = js["metadata"]["name"]
    assert len(name) <= MAX_NAME and len(f"{name}-node-0-127-abcde") <= 63
    assert name == jobset_name("r" * 40 + "-i0-prompt-generator")  # deterministic: a create is a 409
    assert jobset_name("r" * 40 + "-i0-prompt-generator-a2") != name
    assert jobset_name("short-i1-train") == "short-i1-train"


# ---- status --------------------------------------------------------------------------------------

def _jobset(conditions=(), suspend=None, restarts=0, attempt="1"):
    return {"metadata": {"name": "r-i1-train", "uid": "js", "creationTimestamp": "2026-01-01T11:00:00Z",
                         "labels": {"synpo.dev/stage-key": "i1-train"}, "annotations": {"synpo.dev/attempt": attempt}},
            "spec": {} if suspend is None else {"suspend": suspend},
            "status": {"restarts": restarts, "conditions": [
                {"type": t, "status": "True", "reason": r, "message": m, "lastTransitionTime": "2026-01-01T11:30:00Z"}
                for t, r, m in conditions]}}


def _pod(rank, phase, exit_code=0, message=None):
    term = {"exitCode": exit_code, "startedAt": "2026-01-01T11:00:00Z", "finishedAt": "2026-01-01T11:10:00Z"}
    if message:
        term["message"] = message
    return {"metadata": {"annotations": {"batch.kubernetes.io/job-completion-index": str(rank),
                                         "synpo.dev/gpus-per-pod": "8"}},
            "status": {"phase": phase, "containerStatuses": [{"state": {"terminated": term}}]}}


def test_completed_jobset_reports_rank_zeros_result_and_every_pods_gpu_time():
    rec = jobset_record(_jobset([("Completed", "AllJobsCompleted", "")]),
                        [_pod(0, "Succeeded", message=json.dumps({"steps": 3})),
                         _pod(1, "Succeeded", message=json.dumps({"steps": 3}))], NOW)
    assert rec.key == "i1-train" and rec.state.phase is StagePhase.SUCCEEDED
    assert rec.result["steps"] == 3  # not summed over ranks
    assert rec.gpu_seconds == 2 * 8 * 600
    assert rec.completion_time == "2026-01-01T11:30:00Z"


def test_failed_jobset_says_why_with_the_last_pods_exit_code():
    rec = jobset_record(_jobset([("Failed", "FailedJobs", "jobset failed due to job failure")], restarts=2),
                        [_pod(1, "Failed", 2, json.dumps({"error": "seed: no rows"}))], NOW)
    assert rec.state.phase is StagePhase.FAILED
    assert "FailedJobs: jobset failed due to job failure" in rec.state.message
    assert "last pod exited with code 2: seed: no rows" in rec.state.message
    assert rec.pod_failures == 3  # the group failed 3 times: 2 restarts, then for good


def test_suspended_jobset_is_queued_and_attempt_is_read():
    rec = jobset_record(_jobset([("Suspended", "SuspendedJobs", "")], suspend=True, attempt="2"), [], NOW)
    assert rec.state.phase is StagePhase.RUNNING and rec.queued and rec.state.attempts == 2
    assert not jobset_record(_jobset(), [], NOW).queued


# ---- the reconcile loop with JobSets (the in-memory API server of test_reconcile) -------------------

JOBSETS = "/apis/jobset.x-k8s.io/v1alpha2/namespaces/ns/jobsets"


def _step(h):
    executor = h.executor()
    out = reconcile(h.body, executor, h.now, executor_check=executor.spec_problems)
    if status_differs(h.body.get("status"), out.status):
        status = {**(h.body.get("status") or {}), **status_patch(h.body.get("status"), out.status)}
        h.body["status"] = {k: v for k, v in status.items() if v is not None}
    return out


def test_reconcile_without_jobset_api_fails_naming_the_field():
    h = Harness(resources={"gpusPerPod": 2, "training": {"nodes": 2}})
    out = _step(h)
    assert out.phase == "Failed" and h.kube.creates == []
    failed = next(c for c in h.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert ("spec.resources.training.nodes is 2 but the cluster has no JobSet API (jobset.x-k8s.io/v1alpha2)"
            in failed["message"])
    assert _step(Harness(resources={"gpusPerPod": 2})).phase == "Running"  # one node: no JobSet needed


def test_reconcile_runs_training_stages_as_jobsets_to_success():
    h = Harness(resources={"gpusPerPod": 2, "training": {"nodes": 2}})
    h.kube.objects["/apis/jobset.x-k8s.io"] = {"v1alpha2": {}}  # the API is served
    for _ in range(30):
        out = _step(h)
        if out.phase != "Running":
            break
        for key, job in list(h.kube.jobs().items()):
            if not job["status"].get("conditions"):
                h.kube.finish(key.removeprefix("demo-"), result=RESULTS.get(key.removeprefix("demo-")))
        for name, js in h.kube.objects.get(JOBSETS, {}).items():
            if js["status"].get("conditions"):
                continue
            template = js["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
            for rank in range(2):
                h.kube.objects.setdefault("/api/v1/namespaces/ns/pods", {})[f"{name}-{rank}"] = {
                    "metadata": {"name": f"{name}-{rank}",
                                 "labels": {**template["metadata"]["labels"], "jobset.sigs.k8s.io/jobset-name": name},
                                 "annotations": {"batch.kubernetes.io/job-completion-index": str(rank)}},
                    "status": {"phase": "Succeeded", "containerStatuses": [{"state": {"terminated": {
                        "exitCode": 0, "message": json.dumps(RESULTS[js["metadata"]["labels"]["synpo.dev/stage-key"]]),
                    }}}]}}
            js["status"] = {"conditions": [{"type": "Completed", "status": "True",
                                            "lastTransitionTime": "2025-01-01T12:30:00Z"}]}
        h.now += timedelta(seconds=60)
    assert out.phase == "Succeeded", h.status
    made = sorted(c for c in h.kube.creates if c.startswith("jobsets/"))
    assert made == ["jobsets/demo-i0-prompt-generator", "jobsets/demo-i1-improver", "jobsets/demo-i1-train"]
    assert not any(c.startswith("jobs/") and c.split("-", 1)[1] in ("i0-prompt-generator", "i1-improver", "i1-train")
                   for c in h.kube.creates)
    stages = {s["name"]: s for s in h.status["stages"]}
    assert stages["i1-train"]["result"]["steps"] == 3 and stages["i1-improver"]["result"]["rows"] == 30
