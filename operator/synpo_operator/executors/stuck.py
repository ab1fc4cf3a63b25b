"""Why a stage's pods cannot start, read from its Job, the Job's pods and the Job's FailedCreate Events (API
JSON): pure, used by the Jobs executor.

Kubernetes says it in four places, none of which changes the Job's status:
- the API server refuses the pods (missing PriorityClass or ServiceAccount, ResourceQuota, Pod Security): the
  Job controller records a `FailedCreate` Event on the Job and retries with back-off; no pod exists;
- the scheduler finds no node (too many GPUs, a nodeSelector nobody matches, a missing PVC): the pod's
  PodScheduled condition is False with reason Unschedulable and the scheduler's message; when that message
  says the pod would fit once other pods free their resources, it only waits for capacity (WaitingForResources,
  never failed for it: that is how a busy cluster without Kueue queues batch pods);
- the kubelet cannot pull the image: the container waits with ErrImagePull / ImagePullBackOff /
  InvalidImageName;
- the kubelet cannot build the container's config (a missing Secret, ConfigMap or key): the container waits with
  CreateContainerConfigError.
`reconcile` turns a stuck stage into the StageStuck condition and an Event; after spec.stuckPodTimeoutSeconds
(`stuck_failure`) the Jobs executor fails the stage's Job with the cause. The pre-flight's pod held by a
configuration cause (a missing Secret or key, an image that cannot be pulled) fails after PREFLIGHT_GRACE_SECONDS
instead, naming the run field behind it (`spec_fields`): the run then fails with PreflightFailed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from ..api import conditions as reasons
from ..api.conditions import clip
from ..api.run import SynPORunSpec
from ..clock import parse_time
from ..plan.executor import Stuck
from ..plan.graph import PREFLIGHT_KEY, stage_graph
from .manifests import secret_refs

FAILED_CREATE = "FailedCreate"
"""The reason of the Job controller's Event when the API server refuses a pod."""
IMAGE_PULL = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
PERMANENT = {"InvalidImageName", "ErrImageNeverPull"}
"""Waiting reasons no wait can fix (the image reference cannot be parsed; pull policy Never and no image)."""
CONFIG = {"CreateContainerConfigError"}
CONFIGURATION = frozenset({reasons.IMAGE_PULL_FAILED, reasons.CONTAINER_CONFIG_ERROR})
"""Stuck reasons a run's own spec causes (its image, its Secrets): the pre-flight fails on them promptly."""
PREFLIGHT_GRACE_SECONDS = 60
"""How long the pre-flight's pod may wait on a configuration cause before the run fails with PreflightFailed
(spec.stuckPodTimeoutSeconds when shorter): a Secret another controller syncs a moment after the apply still
works, and a misconfigured run fails within minutes, not after the stuck timeout meant for busy clusters."""
_COMBINED = "(combined from similar events): "
# the kubelet's words for a Secret it cannot read (pkg/kubelet: the Secret manager's NotFound or the authorizer's
# Forbidden; makeEnvironmentVariables for a missing key)
_SECRET = re.compile(r'secrets? "([^"]+)" (?:not found|is forbidden)')
_SECRET_KEY = re.compile(r"couldn't find key (\S+) in Secret [^/\s]+/([^\s:]+)")
_PREEMPTION = re.compile(r"preemption: 0/(\d+) nodes are available: (.*)", re.DOTALL)
_NOT_HELPFUL = re.compile(r"(\d+) Preemption is not helpful for scheduling")


def fits_when_free(message: str) -> bool:
    """The scheduler's Unschedulable message says some node could take the pod once other pods free their
    resources (its preemption verdict is not "not helpful" on every node): the pod waits for capacity, as any
    batch pod on a busy cluster does. On every node "Preemption is not helpful for scheduling" (a request
    larger than any node, a selector, affinity or taint nothing matches, a missing PVC) means it never fits."""
    found = _PREEMPTION.search(message)
    if not found:
        return False
    hopeless = sum(int(n) for n in _NOT_HELPFUL.findall(found.group(2)))
    return hopeless < int(found.group(1))


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def job_finished(job: Mapping[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed", "SuccessCriteriaMet", "FailureTarget")
               and c.get("status") == "True" for c in (job.get("status") or {}).get("conditions") or [])


def live(pod: Mapping[str, Any]) -> bool:
    """A pod that is not finished and not being deleted."""
    return (not _meta(pod).get("deletionTimestamp")
            and (pod.get("status") or {}).get("phase") in (None, "", "Pending", "Running"))


def pod_stuck(pod: Mapping[str, Any]) -> Stuck | None:
    """Why this pod cannot start, or None (running, finished, or merely on its way)."""
    if not live(pod):
        return None
    status = pod.get("status") or {}
    name = _meta(pod).get("name")
    since = _meta(pod).get("creationTimestamp")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            said = cond.get("message") or ""
            if fits_when_free(said):
                return Stuck(reasons.WAITING_FOR_RESOURCES, clip(f"pod {name} waits for resources other pods "
                                                                 f"hold: {said}"), since, waits=True)
            return Stuck(reasons.UNSCHEDULABLE, clip(f"pod {name} cannot be scheduled: {said}"), since)
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        why = waiting.get("reason")
        if why in IMAGE_PULL or why in CONFIG:
            text = f"pod {name}, container {cs.get('name')}: {why}"
            if waiting.get("message"):
                text += f": {waiting['message']}"
            reason = reasons.IMAGE_PULL_FAILED if why in IMAGE_PULL else reasons.CONTAINER_CONFIG_ERROR
            return Stuck(reason, clip(text), since, permanent=why in PERMANENT)
    return None


def awaits_pods(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> bool:
    """A Job that should have a pod and has none alive (so a FailedCreate Event may say why)."""
    if (job.get("spec") or {}).get("suspend") or job_finished(job) or _meta(job).get("deletionTimestamp"):
        return False
    return not any(live(p) for p in pods)


def _event_time(event: Mapping[str, Any], *fields: str) -> str:
    for f in fields:
        value = event.get(f) or (_meta(event).get(f) if f == "creationTimestamp" else None)
        if value:
            return str(value)
    return ""


def failed_create(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]],
                  events: Iterable[Mapping[str, Any]]) -> Stuck | None:
    """The API server refusing the Job's pods: its newest FailedCreate Event since its newest pod was made."""
    if not awaits_pods(job, pods):
        return None
    uid = _meta(job).get("uid")
    newest_pod = max((str(_meta(p).get("creationTimestamp") or "") for p in pods), default="")
    mine = [e for e in events if e.get("reason") == FAILED_CREATE
            and (e.get("involvedObject") or {}).get("uid") == uid
            and _event_time(e, "lastTimestamp", "eventTime", "creationTimestamp") >= newest_pod]
    if not mine:
        return None
    last = max(mine, key=lambda e: _event_time(e, "lastTimestamp", "eventTime", "creationTimestamp"))
    first = min(_event_time(e, "firstTimestamp", "eventTime", "creationTimestamp") for e in mine)
    message = str(last.get("message") or "").removeprefix(_COMBINED)
    return Stuck(reasons.POD_CREATION_REFUSED, clip(f"Job {_meta(job).get('name')} cannot create pods: {message}"),
                 max(first, newest_pod) or None)


def stage_stuck(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]],
                events: Iterable[Mapping[str, Any]] = ()) -> Stuck | None:
    """Why the stage this Job runs is stuck (the first stuck pod by name, else refused pod creation), or None."""
    if (job.get("spec") or {}).get("suspend") or job_finished(job):
        return None
    pods = list(pods)
    for pod in sorted(pods, key=lambda p: str(_meta(p).get("name") or "")):
        stuck = pod_stuck(pod)
        if stuck is not None:
            return stuck
    return failed_create(job, pods, events)


def stuck_timeout(stuck: Stuck, stage_key: str, timeout: int) -> int:
    """Seconds the stage may stay stuck before it fails: spec.stuckPodTimeoutSeconds (`timeout`), at most
    PREFLIGHT_GRACE_SECONDS for the pre-flight held by a configuration cause."""
    if stage_key == PREFLIGHT_KEY and stuck.reason in CONFIGURATION:
        return min(timeout, PREFLIGHT_GRACE_SECONDS)
    return timeout


def spec_fields(stuck: Stuck, spec: SynPORunSpec, stage_key: str) -> list[str]:
    """The run fields behind a configuration cause, as far as the kubelet's words tell: the image (and its pull
    Secrets), or the fields referencing the Secret (and key) it cannot read; [] when none can be named."""
    if stuck.reason == reasons.IMAGE_PULL_FAILED:
        return ["spec.resources.image"] + (["spec.resources.imagePullSecrets"]
                                           if spec.resources.image_pull_secrets else [])
    if stuck.reason != reasons.CONTAINER_CONFIG_ERROR:
        return []
    node = next((n for n in stage_graph(spec) if n.key == stage_key), None)
    refs = secret_refs(spec, node) if node is not None else []
    if found := _SECRET_KEY.search(stuck.message):
        key, name = found.groups()
        return [field for field, ref in refs if ref.name == name and ref.key == key]
    if found := _SECRET.search(stuck.message):
        return [field for field, ref in refs if ref.name == found.group(1)]
    return []


def stuck_failure(stuck: Stuck, timeout: int, now: datetime, *, stage_key: str = "",
                  fields: Iterable[str] = ()) -> str | None:
    """The failure message of a stage stuck for its `stuck_timeout` (at once for a cause waiting cannot fix),
    or None while it may still come unstuck (a node being added, a Secret synced by another controller, a
    registry back up: why image pull and config errors wait too). `fields` (`spec_fields`) lead the message."""
    if stuck.waits:
        return None
    if stuck.permanent:
        why = "waiting cannot fix this"
    else:
        since = parse_time(stuck.since) or now
        age = max(0.0, (now - since).total_seconds())
        allowed = stuck_timeout(stuck, stage_key, timeout)
        if age < allowed:
            return None
        why = (f"the pre-flight's pod could not start for {int(age)} s; the pre-flight waits {allowed} s on its "
               "image and Secrets" if allowed < timeout else
               f"stuck for {int(age)} s; spec.stuckPodTimeoutSeconds is {timeout}")
    named = ", ".join(fields)
    return clip(f"{named + ': ' if named else ''}{stuck.reason}: {stuck.message} ({why})")
