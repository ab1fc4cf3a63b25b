"""Conditions of SynPORuns and SynPOSchedules: the reasons, and the one builder every status uses.

A condition keeps its lastTransitionTime while its status stays the same (Kubernetes API conventions), and
carries the generation it was computed from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from ..clock import rfc3339
from .common import Condition

MAX_MESSAGE = 1024

# Reasons (CamelCase, machine-readable): one spelling each.
INVALID_SPEC = "InvalidSpec"
JOB_REFUSED = "JobRefused"  # the API server or a cluster policy refused a stage's Job: not retried
WAITING_FOR_CAPACITY = "WaitingForCapacity"
QUEUED = "Queued"
STAGE_RUNNING = "StageRunning"
STAGE_FAILED = "StageFailed"
PREFLIGHT_FAILED = "PreflightFailed"  # the pre-flight stage found a reference, data file or storage unusable
RUN_SUCCEEDED = "RunSucceeded"
DEADLINE_EXCEEDED = "DeadlineExceeded"
SUSPENDED = "Suspended"
RESUMED = "Resumed"
NOT_SUSPENDED = "NotSuspended"
STUCK = "Stuck"
# the StageStuck condition: a stage whose pods cannot start, one reason per cause (docs/troubleshooting.md)
STAGE_STUCK = "StageStuck"
POD_CREATION_REFUSED = "PodCreationRefused"
UNSCHEDULABLE = "Unschedulable"
WAITING_FOR_RESOURCES = "WaitingForResources"
IMAGE_PULL_FAILED = "ImagePullFailed"
CONTAINER_CONFIG_ERROR = "ContainerConfigError"
NOT_STUCK = "NotStuck"
# schedules
WAITING = "Waiting"
ACTIVE = "Active"
RUN_CREATED = "RunCreated"
TOO_MANY_MISSED = "TooManyMissedTimes"
CONCURRENCY_FORBID = "ConcurrencyForbid"
CONCURRENCY_CAP = "ConcurrencyCap"

RUN_CONDITION_TYPES = ("Ready", "Succeeded", "Failed", "Suspended")
_PHASE_TRUE = {
    # phase -> the condition types that are True in it
    "Succeeded": {"Ready", "Succeeded"},
    "Failed": {"Failed"},
    "Suspended": {"Suspended"},
    "Running": set(),
    "Pending": set(),
}


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """A message fit for a condition or Event: one line, at most `limit` characters."""
    text = " ".join(text.split()) if "\n" in text else text
    return text if len(text) <= limit else text[: limit - 1] + "…"


def ready_reason(status: Mapping[str, Any] | None) -> str | None:
    """The reason of the Ready condition in a status (None without one)."""
    for cond in (status or {}).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            return cond.get("reason")
    return None


def condition(type_: str, true: bool, reason: str, message: str, generation: int | None,
              previous: Iterable[Mapping[str, Any]] | None, now: datetime) -> dict[str, Any]:
    """One condition (API JSON); lastTransitionTime kept from `previous` when the status did not change."""
    status = "True" if true else "False"
    old = next((c for c in previous or [] if isinstance(c, Mapping) and c.get("type") == type_), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == status else None
    return Condition(type=type_, status=status, reason=reason, message=clip(message, 32768),
                     observed_generation=generation, last_transition_time=since or rfc3339(now)).to_api()


def run_conditions(phase: str, reason: str, message: str, generation: int | None,
                   previous: Iterable[Mapping[str, Any]] | None, now: datetime) -> list[dict[str, Any]]:
    """Ready/Succeeded/Failed/Suspended of a run in `phase`."""
    previous = list(previous or [])
    true = _PHASE_TRUE[phase]
    out = []
    for type_ in RUN_CONDITION_TYPES:
        c_reason, c_message = reason, message
        if type_ == "Suspended" and type_ not in true:
            old = next((c for c in previous if isinstance(c, Mapping) and c.get("type") == type_), None)
            if old and old.get("status") == "True":
                c_reason, c_message = RESUMED, "spec.suspend is false"
            elif old:
                c_reason, c_message = old.get("reason") or NOT_SUSPENDED, old.get("message") or ""
            else:
                c_reason, c_message = NOT_SUSPENDED, ""
        out.append(condition(type_, type_ in true, c_reason, c_message, generation, previous, now))
    return out


def stuck_condition(stuck: list[tuple[str, str]], generation: int | None,
                    previous: Iterable[Mapping[str, Any]] | None, now: datetime) -> dict[str, Any] | None:
    """StageStuck of a run: True with the first cause's reason and every stuck stage's message (`stuck`:
    (reason, message) in stage order); False (NotStuck) once none is stuck; absent while none ever was."""
    previous = list(previous or [])
    if stuck:
        return condition(STAGE_STUCK, True, stuck[0][0], "; ".join(m for _, m in stuck), generation, previous, now)
    if any(isinstance(c, Mapping) and c.get("type") == STAGE_STUCK for c in previous):
        return condition(STAGE_STUCK, False, NOT_STUCK, "no stage is stuck", generation, previous, now)
    return None


def schedule_conditions(ready: bool, reason: str, message: str, suspended: bool, generation: int | None,
                        previous: Iterable[Mapping[str, Any]] | None, now: datetime) -> list[dict[str, Any]]:
    """Ready and Suspended of a schedule."""
    previous = list(previous or [])
    return [condition("Ready", ready, reason, message, generation, previous, now),
            condition("Suspended", suspended, SUSPENDED if suspended else ACTIVE, "", generation, previous, now)]


def invalid_spec_conditions(message: str, generation: int | None,
                            previous: Iterable[Mapping[str, Any]] | None, now: datetime) -> list[dict[str, Any]]:
    """A schedule whose spec the API server accepted but the models reject: Ready False, InvalidSpec."""
    return [condition("Ready", False, INVALID_SPEC, message, generation, previous, now)]
