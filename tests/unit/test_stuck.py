"""Stuck stages: the pure classification (executors/stuck.py) and what a reconcile makes of it (StageStuck
condition, one Event per cause, the stage failed after spec.stuckPodTimeoutSeconds) against the in-memory API
server of test_reconcile."""

from __future__ import annotations

from datetime import timedelta

import pytest

from synpo_operator.api import conditions as reasons
from synpo_operator.api.run import SynPORunSpec
from synpo_operator.executors.manifests import ANNOTATION_STUCK_FAILURE
from synpo_operator.executors.stuck import (
    PREFLIGHT_GRACE_SECONDS,
    failed_create,
    fits_when_free,
    pod_stuck,
    spec_fields,
    stage_stuck,
    stuck_failure,
    stuck_timeout,
)
from synpo_operator.kube import KubeError
from synpo_operator.plan.executor import Stuck
from synpo_operator.plan.graph import PREFLIGHT_KEY

from .test_reconcile import RUN_DOC, T0, Harness, ts

# the real scheduler's words (k8s v1.36, the dev cluster): a request no node can hold, then a node that could
# hold it once other pods are gone
SCHEDULER = ("0/1 nodes are available: 1 Insufficient memory, 1 Insufficient nvidia.com/gpu. no new claims to "
             "deallocate, preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.")
BUSY = ("0/1 nodes are available: 1 Insufficient memory, 1 Insufficient nvidia.com/gpu. no new claims to "
        "deallocate, preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.")
PRIORITY = 'Error creating: pods "demo-i0-keywords-x7k2p" is forbidden: no PriorityClass with name batch-high was found'


def pod(name="demo-i0-keywords-abcde", *, phase="Pending", conditions=(), waiting=None, init_waiting=None,
        job_uid="uid-1", created=T0, deleting=False):
    meta = {"name": name, "uid": f"pod-{name}", "creationTimestamp": ts(created),
            "labels": {"synpo.dev/run": "demo", "synpo.dev/stage-key": "i0-keywords"},
            "ownerReferences": [{"kind": "Job", "uid": job_uid, "name": "demo-i0-keywords"}]}
    if deleting:
        meta["deletionTimestamp"] = ts(created)
    status: dict = {"phase": phase, "conditions": list(conditions)}
    if waiting is not None:
        status["containerStatuses"] = [{"name": "stage", "state": {"waiting": waiting}}]
    if init_waiting is not None:
        status["initContainerStatuses"] = [{"name": "init", "state": {"waiting": init_waiting}}]
    return {"metadata": meta, "spec": {"containers": [{"name": "stage"}]}, "status": status}


def unschedulable(message=SCHEDULER):
    return {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
            "lastTransitionTime": ts(T0)}


def job(uid="uid-1", *, suspend=False, conditions=()):
    return {"metadata": {"name": "demo-i0-keywords", "uid": uid, "creationTimestamp": ts(T0)},
            "spec": {"suspend": suspend} if suspend else {},
            "status": {"conditions": list(conditions)} if conditions else {}}


def failed_create_event(uid="uid-1", message=PRIORITY, first=T0, last=T0):
    return {"reason": "FailedCreate", "message": message, "firstTimestamp": ts(first), "lastTimestamp": ts(last),
            "involvedObject": {"kind": "Job", "name": "demo-i0-keywords", "uid": uid}}


# ---- classification ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("waiting, reason, permanent", [
    ({"reason": "ErrImagePull", "message": 'pull access denied for synpo, repository does not exist'},
     reasons.IMAGE_PULL_FAILED, False),
    ({"reason": "ImagePullBackOff", "message": 'Back-off pulling image "synpo:0.1"'}, reasons.IMAGE_PULL_FAILED, False),
    ({"reason": "InvalidImageName", "message": 'couldn\'t parse image name "Synpo::x"'}, reasons.IMAGE_PULL_FAILED, True),
    ({"reason": "ErrImageNeverPull", "message": "image not present with pull policy Never"},
     reasons.IMAGE_PULL_FAILED, True),
    ({"reason": "CreateContainerConfigError", "message": 'secret "hf-token" not found'},
     reasons.CONTAINER_CONFIG_ERROR, False),
])
def test_container_waiting_reasons(waiting, reason, permanent):
    stuck = pod_stuck(pod(waiting=waiting))
    assert stuck == Stuck(reason, f"pod demo-i0-keywords-abcde, container stage: {waiting['reason']}: "
                                  f"{waiting['message']}", ts(T0), permanent)
    # an init container's waiting counts the same
    assert pod_stuck(pod(init_waiting=waiting)).reason == reason


def test_unschedulable_carries_the_schedulers_message():
    stuck = pod_stuck(pod(conditions=[unschedulable()]))
    assert stuck.reason == reasons.UNSCHEDULABLE and not stuck.permanent
    assert stuck.message == f"pod demo-i0-keywords-abcde cannot be scheduled: {SCHEDULER}"


@pytest.mark.parametrize("message, fits", [
    (SCHEDULER, False),
    (BUSY, True),
    ("0/5 nodes are available: 2 node(s) didn't match Pod's node affinity/selector, 3 Insufficient nvidia.com/gpu. "
     "preemption: 0/5 nodes are available: 2 Preemption is not helpful for scheduling, 3 No preemption victims "
     "found for incoming pod.", True),
    ("0/5 nodes are available: 5 node(s) had untolerated taint {nvidia.com/gpu: }. preemption: 0/5 nodes are "
     "available: 5 Preemption is not helpful for scheduling.", False),
    ('0/1 nodes are available: persistentvolumeclaim "synpo-workspace" not found. not found', False),
    ("", False),
])
def test_fits_once_other_pods_are_gone(message, fits):
    assert fits_when_free(message) is fits


def test_a_pod_waiting_for_busy_resources_is_reported_but_never_failed():
    stuck = pod_stuck(pod(conditions=[unschedulable(BUSY)]))
    assert stuck.reason == reasons.WAITING_FOR_RESOURCES and stuck.waits
    assert stuck.message == f"pod demo-i0-keywords-abcde waits for resources other pods hold: {BUSY}"
    assert stuck_failure(stuck, 10, T0 + timedelta(days=3)) is None


@pytest.mark.parametrize("p", [
    pod(),  # just created: on its way
    pod(waiting={"reason": "ContainerCreating"}),  # pulling a big image is not stuck
    pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]),  # Kueue gates
    pod(phase="Running"),
    pod(phase="Failed", waiting={"reason": "ErrImagePull"}),
    pod(conditions=[unschedulable()], deleting=True),
])
def test_not_stuck(p):
    assert pod_stuck(p) is None


def test_refused_pod_creation():
    stuck = failed_create(job(), [], [failed_create_event(), failed_create_event(uid="other", message="x")])
    assert stuck.reason == reasons.POD_CREATION_REFUSED
    assert stuck.message == f"Job demo-i0-keywords cannot create pods: {PRIORITY}"
    assert stuck.since == ts(T0)
    # the event recorder's aggregate of similar Events keeps the message, not the prefix
    combined = failed_create_event(message=f"(combined from similar events): {PRIORITY}",
                                   last=T0 + timedelta(seconds=30))
    assert failed_create(job(), [], [failed_create_event(), combined]).message.endswith(PRIORITY)
    # not while a live pod exists, nor for an Event older than the newest pod (a later retry may be refused)
    assert failed_create(job(), [pod(phase="Running")], [failed_create_event()]) is None
    newer = pod(phase="Failed", created=T0 + timedelta(minutes=5))
    assert failed_create(job(), [newer], [failed_create_event()]) is None
    later = failed_create_event(first=T0 + timedelta(minutes=6), last=T0 + timedelta(minutes=7))
    assert failed_create(job(), [newer], [later]).since == ts(T0 + timedelta(minutes=6))
    # a suspended (queued) or finished Job is not stuck
    assert failed_create(job(suspend=True), [], [failed_create_event()]) is None
    done = job(conditions=[{"type": "Failed", "status": "True"}])
    assert stage_stuck(done, [pod(conditions=[unschedulable()])], [failed_create_event()]) is None


def test_the_first_stuck_pod_of_a_sharded_stage_names_the_cause():
    pods = [pod("demo-b", phase="Running"), pod("demo-c", waiting={"reason": "ErrImagePull"}),
            pod("demo-a", conditions=[unschedulable()])]
    assert stage_stuck(job(), pods).message.startswith("pod demo-a cannot be scheduled")


def test_timeout():
    stuck = Stuck(reasons.UNSCHEDULABLE, "pod p cannot be scheduled: no node", ts(T0))
    assert stuck_failure(stuck, 60, T0 + timedelta(seconds=59)) is None
    assert stuck_failure(stuck, 60, T0 + timedelta(seconds=61)) == (
        "Unschedulable: pod p cannot be scheduled: no node (stuck for 61 s; spec.stuckPodTimeoutSeconds is 60)")
    invalid = Stuck(reasons.IMAGE_PULL_FAILED, "pod p, container stage: InvalidImageName", ts(T0), permanent=True)
    assert stuck_failure(invalid, 900, T0).endswith("(waiting cannot fix this)")


# ---- the pre-flight: a configuration cause fails it after PREFLIGHT_GRACE_SECONDS, naming the field -----------

SECRETS = {  # a judge's key, an HF token and the object store's credentials, all from Secrets
    "env": [{"name": "HF_TOKEN", "secretKeyRef": {"name": "hf", "key": "token"}},
            {"name": "LOG_LEVEL", "value": "info"},
            {"name": "AWS_ACCESS_KEY_ID", "secretKeyRef": {"name": "s3", "key": "id"}},
            {"name": "AWS_SECRET_ACCESS_KEY", "secretKeyRef": {"name": "s3", "key": "secret"}}],
    "evaluation": {"judges": [
        {"type": "openai", "endpoint": "http://judge/v1", "model": "j", "apiKeySecretRef": {"name": "judge", "key": "k"}},
        {"type": "openai", "endpoint": "http://other/v1", "model": "j", "apiKeySecretRef": {"name": "s3", "key": "id"}},
    ]},
}


def _spec(**extra) -> SynPORunSpec:
    return SynPORunSpec.model_validate({**RUN_DOC["spec"], **SECRETS, **extra})


def _config(message: str) -> Stuck:
    return Stuck(reasons.CONTAINER_CONFIG_ERROR, f"pod p, container stage: CreateContainerConfigError: {message}",
                 ts(T0))


@pytest.mark.parametrize("message, fields", [
    ('secret "judge" not found', ["spec.evaluation.judges[0].apiKeySecretRef"]),
    ('secrets "hf" is forbidden: User "system:node:n1" cannot get resource "secrets"',
     ["spec.env[0].secretKeyRef (HF_TOKEN)"]),
    # the kubelet names the key: only the fields reading that key of that Secret
    ("couldn't find key secret in Secret ns/s3", ["spec.env[3].secretKeyRef (AWS_SECRET_ACCESS_KEY)"]),
    ("couldn't find key id in Secret ns/s3",
     ["spec.env[2].secretKeyRef (AWS_ACCESS_KEY_ID)", "spec.evaluation.judges[1].apiKeySecretRef"]),
    ('secret "s3" not found', ["spec.env[2].secretKeyRef (AWS_ACCESS_KEY_ID)",
                               "spec.env[3].secretKeyRef (AWS_SECRET_ACCESS_KEY)",
                               "spec.evaluation.judges[1].apiKeySecretRef"]),
    ('secret "nobody-names-this" not found', []),
    ('configmap "x" not found', []),
])
def test_the_field_behind_a_secret_the_kubelet_cannot_read(message, fields):
    assert spec_fields(_config(message), _spec(), PREFLIGHT_KEY) == fields


def test_judge_keys_are_read_only_by_the_stages_that_ask_judges():
    # the keywords stage's pods get no judge key: a missing one cannot be what holds them
    assert spec_fields(_config('secret "judge" not found'), _spec(), "i0-keywords") == []
    assert spec_fields(_config('secret "hf" not found'), _spec(), "i0-keywords") == [
        "spec.env[0].secretKeyRef (HF_TOKEN)"]


def test_the_field_behind_an_image_that_cannot_be_pulled():
    pull = Stuck(reasons.IMAGE_PULL_FAILED, 'pod p, container stage: ErrImagePull: pull access denied', ts(T0))
    assert spec_fields(pull, _spec(), PREFLIGHT_KEY) == ["spec.resources.image"]
    private = _spec(resources={"image": "reg/synpo:1", "imagePullSecrets": ["reg"]})
    assert spec_fields(pull, private, PREFLIGHT_KEY) == ["spec.resources.image", "spec.resources.imagePullSecrets"]
    unschedulable = Stuck(reasons.UNSCHEDULABLE, "pod p cannot be scheduled: no node", ts(T0))
    assert spec_fields(unschedulable, _spec(), PREFLIGHT_KEY) == []


def test_the_preflight_waits_a_short_grace_on_configuration_causes_only():
    config = _config('secret "judge" not found')
    pull = Stuck(reasons.IMAGE_PULL_FAILED, "pod p, container stage: ImagePullBackOff: Back-off", ts(T0))
    unschedulable = Stuck(reasons.UNSCHEDULABLE, "pod p cannot be scheduled: no node", ts(T0))
    assert stuck_timeout(config, PREFLIGHT_KEY, 900) == stuck_timeout(pull, PREFLIGHT_KEY, 900) == 60
    assert PREFLIGHT_GRACE_SECONDS == 60
    assert stuck_timeout(config, PREFLIGHT_KEY, 30) == 30  # a shorter stuck timeout still holds
    assert stuck_timeout(config, "i0-keywords", 900) == 900  # other stages: a Secret may come later
    assert stuck_timeout(unschedulable, PREFLIGHT_KEY, 900) == 900  # capacity is no configuration error
    fields = ["spec.evaluation.judges[0].apiKeySecretRef"]
    assert stuck_failure(config, 900, T0 + timedelta(seconds=59), stage_key=PREFLIGHT_KEY, fields=fields) is None
    assert stuck_failure(config, 900, T0 + timedelta(seconds=61), stage_key=PREFLIGHT_KEY, fields=fields) == (
        'spec.evaluation.judges[0].apiKeySecretRef: ContainerConfigError: pod p, container stage: '
        'CreateContainerConfigError: secret "judge" not found (the pre-flight\'s pod could not start for 61 s; '
        "the pre-flight waits 60 s on its image and Secrets)")
    assert stuck_failure(config, 900, T0 + timedelta(seconds=61), stage_key="i0-keywords") is None
    assert stuck_failure(config, 30, T0 + timedelta(seconds=31), stage_key=PREFLIGHT_KEY).endswith(
        "(stuck for 31 s; spec.stuckPodTimeoutSeconds is 30)")


def test_a_preflight_pod_without_its_secret_fails_the_run_with_preflight_failed():
    h = Harness(**SECRETS)  # stuckPodTimeoutSeconds: the default (900)
    h.step()
    assert h.job_names() == ["demo-i0-preflight"]
    preflight = h.kube.jobs()["demo-i0-preflight"]
    preflight["status"] = {"startTime": ts(T0), "active": 1}
    _add(h, pod("demo-i0-preflight-abcde", job_uid=preflight["metadata"]["uid"],
                waiting={"reason": "CreateContainerConfigError", "message": 'secret "judge" not found'}))
    h.now = T0 + timedelta(seconds=5)
    out = h.step()
    assert _stuck_condition(h)["reason"] == reasons.CONTAINER_CONFIG_ERROR
    assert out.requeue_after == pytest.approx(60 - 5 + 0.5)  # the grace, not stuckPodTimeoutSeconds
    h.now = T0 + timedelta(seconds=61)
    h.step()
    h.step()
    assert h.status["phase"] == "Failed"
    failed = next(c for c in h.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == reasons.PREFLIGHT_FAILED
    assert failed["message"].startswith("pre-flight check failed: spec.evaluation.judges[0].apiKeySecretRef: "
                                        "ContainerConfigError: pod demo-i0-preflight-abcde, container stage: "
                                        'CreateContainerConfigError: secret "judge" not found')
    assert h.job_names() == ["demo-i0-preflight"]  # nothing else started


# ---- reconcile ----------------------------------------------------------------------------------------------

def _stuck_condition(h):
    return next((c for c in h.status["conditions"] if c["type"] == reasons.STAGE_STUCK), None)


def _add(h, p):
    h.kube.objects.setdefault("/api/v1/namespaces/ns/pods", {})[p["metadata"]["name"]] = p


def test_unschedulable_stage_condition_event_then_failure_after_the_timeout():
    h = Harness(stuckPodTimeoutSeconds=300)
    h.pass_preflight()
    h.step()
    assert _stuck_condition(h) is None  # never stuck: no condition at all
    keywords = h.kube.jobs()["demo-i0-keywords"]
    keywords["status"] = {"startTime": ts(T0), "active": 1}
    _add(h, pod(conditions=[unschedulable()], job_uid=keywords["metadata"]["uid"]))
    h.now = T0 + timedelta(seconds=20)
    out = h.step()
    cond = _stuck_condition(h)
    assert cond["status"] == "True" and cond["reason"] == reasons.UNSCHEDULABLE
    assert cond["message"] == f"stage i0-keywords is stuck (Unschedulable): pod demo-i0-keywords-abcde cannot be " \
                              f"scheduled: {SCHEDULER}"
    assert [(e.type, e.reason, e.message) for e in out.events] == [("Warning", "Unschedulable", cond["message"])]
    assert h.status["phase"] == "Running"
    assert out.requeue_after == pytest.approx(300 - 20 + 0.5)  # the timeout is due then, events or not
    # the same cause again: no second Event
    h.now += timedelta(seconds=30)
    assert not h.step().events
    # past the timeout: the Job is failed (annotation + activeDeadlineSeconds), the stage and the run fail
    h.now = T0 + timedelta(seconds=301)
    out = h.step()
    patched = h.kube.jobs()["demo-i0-keywords"]
    assert patched["spec"]["activeDeadlineSeconds"] == 1
    failure = patched["metadata"]["annotations"][ANNOTATION_STUCK_FAILURE]
    assert failure.startswith("Unschedulable: pod demo-i0-keywords-abcde cannot be scheduled: 0/1 nodes")
    assert failure.endswith("(stuck for 301 s; spec.stuckPodTimeoutSeconds is 300)")
    stage = {s["name"]: s for s in h.status["stages"]}["i0-keywords"]
    assert stage["phase"] == "Failed" and stage["message"] == failure
    assert h.status["phase"] == "Failed" and failure in h.status["conditions"][0]["message"]
    assert _stuck_condition(h)["status"] == "False" and _stuck_condition(h)["reason"] == reasons.NOT_STUCK
    assert any(e.reason == "StageFailed" and failure in e.message for e in out.events)
    assert "jobs/demo-i0-keywords" not in h.kube.deletes  # it stays, Failed: deleting it retries the stage
    # later reconciles agree (the annotation is the record), and deleting the Job retries the stage
    assert h.step().phase == "Failed"
    h.kube("DELETE", "/apis/batch/v1/namespaces/ns/jobs/demo-i0-keywords")
    assert "i0-keywords" in h.step().started


def test_the_condition_clears_when_the_stage_moves_on():
    h = Harness()
    h.pass_preflight()
    h.step()
    keywords = h.kube.jobs()["demo-i0-keywords"]
    keywords["status"] = {"startTime": ts(T0), "active": 1}
    stuck = pod(waiting={"reason": "CreateContainerConfigError", "message": 'secret "hf" not found'},
                job_uid=keywords["metadata"]["uid"])
    _add(h, stuck)
    h.step()
    assert _stuck_condition(h)["reason"] == reasons.CONTAINER_CONFIG_ERROR
    stuck["status"] = {"phase": "Running", "containerStatuses": [{"name": "stage", "state": {"running": {}}}]}
    out = h.step()
    assert _stuck_condition(h)["status"] == "False" and not out.events
    assert h.status["phase"] == "Running"


def test_refused_pods_are_read_from_the_jobs_events():
    h = Harness(stuckPodTimeoutSeconds=60)
    h.pass_preflight()
    h.step()
    uid = h.kube.jobs()["demo-i0-keywords"]["metadata"]["uid"]
    h.kube.objects.setdefault("/api/v1/namespaces/ns/events", {})["e1"] = {
        "metadata": {"name": "e1"}, **failed_create_event(uid=uid)}
    h.now = T0 + timedelta(seconds=10)
    out = h.step()
    assert _stuck_condition(h)["reason"] == reasons.POD_CREATION_REFUSED
    assert [e.reason for e in out.events] == [reasons.POD_CREATION_REFUSED]
    assert PRIORITY in out.events[0].message
    h.now = T0 + timedelta(seconds=61)
    h.step()
    assert h.status["phase"] == "Failed" and "no PriorityClass with name batch-high" in h.status["conditions"][0][
        "message"]


def test_an_invalid_image_name_fails_at_once():
    h = Harness()
    h.pass_preflight()
    h.step()
    keywords = h.kube.jobs()["demo-i0-keywords"]
    keywords["status"] = {"startTime": ts(T0), "active": 1}
    uid = keywords["metadata"]["uid"]
    _add(h, pod(waiting={"reason": "InvalidImageName", "message": 'couldn\'t parse image name "A::b"'}, job_uid=uid))
    h.step()
    assert h.status["phase"] == "Failed"
    assert "(waiting cannot fix this)" in {s["name"]: s for s in h.status["stages"]}["i0-keywords"]["message"]


def test_a_busy_cluster_is_reported_not_failed():
    h = Harness(stuckPodTimeoutSeconds=60)
    h.pass_preflight()
    h.step()
    keywords = h.kube.jobs()["demo-i0-keywords"]
    keywords["status"] = {"startTime": ts(T0), "active": 1}
    _add(h, pod(conditions=[unschedulable(BUSY)], job_uid=keywords["metadata"]["uid"]))
    out = h.step()
    assert _stuck_condition(h)["reason"] == reasons.WAITING_FOR_RESOURCES
    assert [(e.type, e.reason) for e in out.events] == [("Normal", reasons.WAITING_FOR_RESOURCES)]
    assert out.requeue_after is None  # no timeout to wake up for
    h.now = T0 + timedelta(hours=5)
    assert h.step().phase == "Running" and h.kube.jobs()["demo-i0-keywords"]["spec"]["activeDeadlineSeconds"] == 86400


def test_without_rbac_to_patch_jobs_the_stage_stays_reported_stuck():
    h = Harness(stuckPodTimeoutSeconds=60)
    h.pass_preflight()
    h.step()
    keywords = h.kube.jobs()["demo-i0-keywords"]
    keywords["status"] = {"startTime": ts(T0), "active": 1}
    _add(h, pod(conditions=[unschedulable()], job_uid=keywords["metadata"]["uid"]))
    serve = h.kube.__call__

    def no_patch(method, path, body=None, **kw):
        if method == "PATCH":
            raise KubeError(method, path, 403, {"reason": "Forbidden"})
        return serve(method, path, body, **kw)

    h.kube = no_patch
    h.now = T0 + timedelta(seconds=61)
    assert h.step().phase == "Running"  # an older chart's RBAC: reported, not failed, no crash loop
    assert _stuck_condition(h)["reason"] == reasons.UNSCHEDULABLE


def test_stuck_pods_and_failed_create_events_queue_their_run(monkeypatch):
    """The controller's watch callbacks: a pod getting stuck (or unstuck) queues its run, other pod changes do
    not (they reach the run through its Job); a FailedCreate Event queues the run of the Job it is about."""
    from synpo_operator.controller.runs import RunController
    from synpo_operator.controller.settings import Settings
    from synpo_operator.events import EventPoster
    from synpo_operator.metrics import Metrics

    rc = RunController(Settings(), Metrics(), EventPoster(send=lambda body: None))
    fresh, stuck = pod(), pod(conditions=[unschedulable()])
    rc.on_pod("MODIFIED", fresh, pod(phase="Running"))
    assert len(rc.queue) == 0
    rc.on_pod("MODIFIED", fresh, stuck)
    assert len(rc.queue) == 1 and rc.queue.get() == ("", "demo")

    class Jobs:
        @staticmethod
        def get(namespace, name):
            return {"metadata": {"name": name, "labels": {"synpo.dev/run": "other"}}} if name == "j" else None

    monkeypatch.setattr("synpo_operator.kube.informer", lambda kind, namespace: Jobs if kind == "jobs" else None)
    rc.on_job_event("ADDED", None, {"involvedObject": {"kind": "Job", "name": "j", "namespace": "ns"}})
    rc.on_job_event("ADDED", None, {"involvedObject": {"kind": "Job", "name": "not-ours", "namespace": "ns"}})
    assert rc.queue.get() == ("ns", "other") and len(rc.queue) == 0
