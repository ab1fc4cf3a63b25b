"""The executor contract: what the reconcile step needs from whatever runs the stages (Jobs, local processes).

Beside `Start` and `StageState` because it is the planner's other half: the planner says what to start, an
executor starts it and reports back what it sees, as `StageRecord`s. Every method is idempotent (reconciles
call them again and again) and an executor never decides anything about the stage graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .planner import StagePhase, StageState, Start


class StageRefused(Exception):
    """The backend refused to start a stage for good: the API server found its Job invalid, or a cluster policy
    (an admission webhook, a ValidatingAdmissionPolicy) denied it. The same spec would be refused again, so the
    run fails with the refusal instead of retrying it."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


@dataclass(frozen=True)
class Stuck:
    """Why a running stage's pods cannot start (a Job the API server refuses pods, an unschedulable pod, an
    image that cannot be pulled, a missing Secret), as the Kubernetes object that says so words it."""

    reason: str
    """One of the StageStuck reasons of `api.conditions`."""
    message: str
    """The cause, as Kubernetes gives it (scheduler, kubelet or admission message), naming the pod or Job."""
    since: str | None = None
    """When it began (RFC 3339): the stage fails stuckPodTimeoutSeconds later."""
    permanent: bool = False
    """Waiting cannot help (an invalid image name): the stage fails at once."""
    waits: bool = False
    """It only waits for resources other pods hold (a busy cluster): reported, never failed for."""


@dataclass(frozen=True)
class StageRecord:
    """Everything an executor observed about one stage."""

    key: str
    state: StageState
    start_time: str | None = None
    completion_time: str | None = None
    result: dict[str, Any] | None = None
    """The stage's result summary (`api.results`; succeeded stages)."""
    gpu_seconds: float | None = None
    """GPUs × run time of every pod so far."""
    pod_failures: int = 0
    """Failed pods that counted towards backoffLimit (disruptions excluded)."""
    queued: bool = False
    """The stage exists but waits for admission (a suspended Job, Kueue)."""
    name: str | None = None
    """The executor's name for it (the Job), for messages."""
    stuck: Stuck | None = None
    """Its pods cannot start, and why (running stages only)."""

    @property
    def finished(self) -> bool:
        return self.state.phase is not StagePhase.RUNNING


class Executor(Protocol):
    """Runs the stages of one run."""

    def records(self) -> dict[str, StageRecord]:
        """Every stage started and still known, by key (deleted or stopped stages left out)."""
        ...

    def start(self, starts: Sequence[Start]) -> list[bool]:
        """Start these stages (independent of each other) unless they exist; per stage, True when this call
        started it."""
        ...

    def stop(self) -> list[str]:
        """Stop every unfinished stage (suspend, failure, deletion); returns the keys stopped. A stopped stage
        is forgotten (absent from `records`, started again on resume), never reported as failed."""
        ...

    def discard(self, keys: Sequence[str]) -> None:
        """Forget these stages, finished or not (their objects deleted), so that they start afresh: a pre-flight
        that checked an older spec."""
        ...
