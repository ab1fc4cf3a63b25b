"""Reading Jobs and their pods (API JSON, camelCase) into stage records: pure, used by the Jobs executor.

Complete → Succeeded, with the result merged from the pods' termination messages; failed for being stuck (the
executor's annotation) → Failed with the cause; Failed → Failed with the Job's reason and the last failed pod's
exit code and message; anything else → Running (queued while the Job is suspended, with Kueue's word on why
from the Job's Workload). Disrupted pods (preemption, node drain) do not count as failures, nor do pods deleted
because the Job was suspended again (Kueue evicted or preempted the stage: it goes back to the queue, which is
not a failed attempt).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from ..api.conditions import clip
from ..api.results import ERROR, merge_results, parse_summary
from ..clock import parse_time, rfc3339
from ..plan.executor import StageRecord
from ..plan.planner import StagePhase, StageState
from .jobset_manifest import COMPLETION_INDEX_ANNOTATION
from .manifests import (
    ANNOTATION_ATTEMPT,
    ANNOTATION_GPUS,
    ANNOTATION_STUCK_FAILED_AT,
    ANNOTATION_STUCK_FAILURE,
    GPU_RESOURCE,
    LABEL_ITERATION,
    LABEL_STAGE,
    LABEL_STAGE_KEY,
)


def _condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return cond
    return None


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (status.get("state") or {}).get("terminated")
        if term:
            return term
    return None


def _pod_times(pod: Mapping[str, Any], now: datetime) -> tuple[datetime | None, datetime | None]:
    status = pod.get("status") or {}
    start: datetime | None = None
    end: datetime | None = None
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        if state.get("running"):
            start = parse_time(state["running"].get("startedAt")) or start
            end = now
        elif state.get("terminated"):
            start = parse_time(state["terminated"].get("startedAt")) or start
            end = parse_time(state["terminated"].get("finishedAt")) or end
    if start is None:
        start = parse_time(status.get("startTime"))
        if start is not None and end is None and status.get("phase") == "Running":
            end = now
    return start, end


def _pod_gpus(pod: Mapping[str, Any]) -> int:
    """The GPUs the operator gave the pod (its annotation: the resource's name is configurable); pods from
    before the annotation: their nvidia.com/gpu limits."""
    annotated = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_GPUS)
    if annotated is not None:
        return int(annotated) if str(annotated).isdigit() else 0
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        limits = (c.get("resources") or {}).get("limits") or {}
        try:
            total += int(limits.get(GPU_RESOURCE, 0))
        except (TypeError, ValueError):
            pass
    return total


def is_disruption(pod: Mapping[str, Any]) -> bool:
    return _condition(pod, "DisruptionTarget") is not None


def _counts_as_failure(pod: Mapping[str, Any], job_suspended: bool) -> bool:
    """A failed pod that counts against backoffLimit. Not a disruption, and not a pod the Job controller is
    deleting because the Job was suspended (a kubelet marks a killed pod Failed before it goes; the Job
    controller drops its tracking finalizer first, so the Job does not count it either)."""
    if (pod.get("status") or {}).get("phase") != "Failed" or is_disruption(pod):
        return False
    return not (job_suspended and (pod.get("metadata") or {}).get("deletionTimestamp"))


WORKLOAD_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
"""Label Kueue puts on the Workload it creates for a Job."""


def workload_message(workload: Mapping[str, Any]) -> str:
    """Kueue's word on why a Workload (a queued stage) is not running: the QuotaReserved=False or
    Admitted=False message (e.g. "couldn't assign flavors to pod set main: insufficient unused quota for
    nvidia.com/gpu in flavor gpu, 1 more needed"), after the eviction that sent it back to the queue, if any."""
    conds = {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or []}
    parts = []
    evicted = conds.get("Evicted")
    if evicted and evicted.get("status") == "True":
        parts.append(f"evicted ({evicted.get('reason') or 'Evicted'}): {evicted.get('message') or ''}".rstrip(": "))
    for type_ in ("QuotaReserved", "Admitted"):
        cond = conds.get(type_)
        if cond and cond.get("status") == "False" and cond.get("message"):
            parts.append(cond["message"])
            break
    else:
        if not parts:
            parts.append("no quota reserved yet" if not conds.get("QuotaReserved") else "admitted; starting")
    return clip("; ".join(parts), 512)


def pod_gpu_seconds(pods: Iterable[Mapping[str, Any]], now: datetime) -> float:
    total = 0.0
    for pod in pods:
        gpus = _pod_gpus(pod)
        if not gpus:
            continue
        start, end = _pod_times(pod, now)
        if start and end and end > start:
            total += gpus * (end - start).total_seconds()
    return total


def owned_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    """True when obj names uid among its owners (or no uid is known)."""
    if not uid:
        return True
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def _summaries(pods: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The result summaries in the termination messages of the succeeded pods."""
    summaries = []
    for pod in pods:
        if (pod.get("status") or {}).get("phase") == "Succeeded":
            term = _terminated(pod)
            summary = parse_summary(term.get("message") if term else None)
            if summary:
                summaries.append(summary)
    return summaries


def _failure_message(failed: Mapping[str, Any], default: str, failed_pods: list[Mapping[str, Any]]) -> str:
    """`<reason>: <message>; last pod exited with code N: <its error>` (the last failed pod's own words)."""
    reason = failed.get("reason") or "Failed"
    parts = [f"{reason}: {failed.get('message') or default}"]
    last = None
    for pod in failed_pods:
        term = _terminated(pod)
        if term and (last is None or str(term.get("finishedAt") or "") >= str(last.get("finishedAt") or "")):
            last = term
    if last is not None:
        detail = f"last pod exited with code {last.get('exitCode')}"
        text = (last.get("message") or "").strip()
        summary = parse_summary(text)
        if summary and isinstance(summary.get(ERROR), str):
            text = summary[ERROR]
        if text:
            detail += f": {text}"
        parts.append(detail)
    return clip("; ".join(parts))


def _attempt(meta: Mapping[str, Any]) -> int:
    try:
        return int((meta.get("annotations") or {}).get(ANNOTATION_ATTEMPT, "1"))
    except ValueError:
        return 1


def _stage_key(labels: Mapping[str, Any]) -> str:
    return labels.get(LABEL_STAGE_KEY) or f"i{labels.get(LABEL_ITERATION)}-{labels.get(LABEL_STAGE)}"


def job_record(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], now: datetime,
               workload: Mapping[str, Any] | None = None) -> StageRecord:
    """A stage's record from its Job, the Job's pods and its Kueue Workload if known (API JSON).

    Complete → Succeeded (summary from the pods' termination messages); Failed → Failed with the Job's
    reason, the last failed pod's exit code and termination message; anything else → Running, queued while
    the Job is suspended (message: the Workload's)."""
    meta = job.get("metadata") or {}
    labels = meta.get("labels") or {}
    key = _stage_key(labels)
    status = job.get("status") or {}
    spec = job.get("spec") or {}
    uid = meta.get("uid")
    own = [p for p in pods if owned_by(p, uid)]
    failed_pods = [p for p in own if _counts_as_failure(p, bool(spec.get("suspend")))]
    gpu_seconds = pod_gpu_seconds(own, now)
    if not own and status.get("startTime"):
        # pods gone (garbage-collected): estimate from the Job's own times
        start = parse_time(status.get("startTime"))
        end = parse_time(status.get("completionTime")) or (now if not _condition(job, "Failed") else None)
        gpus = int((meta.get("annotations") or {}).get(ANNOTATION_GPUS, "0") or 0)
        if start and end and end > start:
            gpu_seconds = gpus * int(spec.get("parallelism") or 1) * (end - start).total_seconds()
    attempt = _attempt(meta)
    common = dict(key=key, start_time=status.get("startTime") or meta.get("creationTimestamp"),
                  gpu_seconds=round(gpu_seconds, 3), pod_failures=max(len(failed_pods), 0),
                  name=meta.get("name"))

    done = _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet")
    if done:
        summaries = _summaries(own)
        completion = status.get("completionTime") or done.get("lastTransitionTime")
        return StageRecord(state=StageState(StagePhase.SUCCEEDED, attempt), completion_time=completion,
                           result=merge_results(summaries), **common)

    stuck = (meta.get("annotations") or {}).get(ANNOTATION_STUCK_FAILURE)
    if stuck:  # failed by the executor for being stuck: the Job controller's DeadlineExceeded follows
        return StageRecord(state=StageState(StagePhase.FAILED, attempt, clip(stuck), retryable=False),
                           completion_time=(meta.get("annotations") or {}).get(ANNOTATION_STUCK_FAILED_AT)
                           or rfc3339(now), **common)

    failed = _condition(job, "Failed") or _condition(job, "FailureTarget")
    if failed:
        message = _failure_message(failed, "the Job failed", failed_pods)
        return StageRecord(state=StageState(StagePhase.FAILED, attempt, message),
                           completion_time=failed.get("lastTransitionTime") or rfc3339(now), **common)

    queued = bool(spec.get("suspend"))
    message = workload_message(workload) if queued and workload else ""
    return StageRecord(state=StageState(StagePhase.RUNNING, attempt, message), queued=queued, **common)


def jobset_record(jobset: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], now: datetime) -> StageRecord:
    """A stage's record from its JobSet and the pods of its Jobs (API JSON), read like `job_record`:
    Completed → Succeeded (the result is node rank 0's: every rank runs the same stage, rank 0 reports);
    Failed → Failed with JobSet's reason and the last failed pod's exit code; anything else → Running,
    queued while suspended. `pod_failures` counts failures of the group (its restarts, plus the final one), not
    of its pods: the whole group is the unit that is retried, so attempts = restarts + 1 as for a one-pod Job."""
    meta = jobset.get("metadata") or {}
    status = jobset.get("status") or {}
    pods = list(pods)
    failed_pods = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed" and not is_disruption(p)]
    failed = _condition(jobset, "Failed")
    common = dict(key=_stage_key(meta.get("labels") or {}),
                  start_time=meta.get("creationTimestamp"),
                  gpu_seconds=round(pod_gpu_seconds(pods, now), 3),
                  pod_failures=int(status.get("restarts") or 0) + (1 if failed else 0), name=meta.get("name"))
    attempt = _attempt(meta)
    done = _condition(jobset, "Completed")
    if done:
        leader = [p for p in pods if ((p.get("metadata") or {}).get("annotations") or {}).get(
            COMPLETION_INDEX_ANNOTATION) == "0"]
        return StageRecord(state=StageState(StagePhase.SUCCEEDED, attempt),
                           completion_time=done.get("lastTransitionTime"),
                           result=merge_results(_summaries(leader or pods)), **common)
    if failed:
        return StageRecord(state=StageState(StagePhase.FAILED, attempt,
                                            _failure_message(failed, "the JobSet failed", failed_pods)),
                           completion_time=failed.get("lastTransitionTime") or rfc3339(now), **common)
    suspended = bool((jobset.get("spec") or {}).get("suspend")) or _condition(jobset, "Suspended") is not None
    return StageRecord(state=StageState(StagePhase.RUNNING, attempt), queued=suspended, **common)


def pods_lag(jobs: list[dict[str, Any]], pods: list[dict[str, Any]]) -> bool:
    """The pods' watch behind the Jobs' watch: some Job counts more finished pods than `pods` holds."""
    phases: dict[str, dict[str, int]] = {}
    for pod in pods:
        phase = (pod.get("status") or {}).get("phase")
        for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
            if ref.get("kind") == "Job":
                counts = phases.setdefault(ref.get("uid"), {})
                counts[phase] = counts.get(phase, 0) + 1
    for job in jobs:
        status = job.get("status") or {}
        counts = phases.get((job.get("metadata") or {}).get("uid"), {})
        if (counts.get("Succeeded", 0) < int(status.get("succeeded") or 0)
                or counts.get("Failed", 0) < int(status.get("failed") or 0)):
            return True
    return False
