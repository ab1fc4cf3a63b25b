"""The planner: a pure function from a run's spec and its observed stages to what happens next.

Both executors (Kubernetes Jobs, local processes) call `plan` and carry out its decision; neither decides
anything about the SynPO stage graph itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from ..api import conditions as reasons
from ..api.run import SynPORunSpec
from .graph import PREFLIGHT, StageNode, stage_graph


class StagePhase(StrEnum):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class StageState:
    """What an executor observed about one stage."""

    phase: StagePhase
    attempts: int = 1
    message: str = ""
    retryable: bool = True
    """False when another attempt cannot help (bad input data: exit code 2)."""


@dataclass(frozen=True)
class Start:
    """Start (or retry) a stage."""

    stage: StageNode
    attempt: int = 1


@dataclass(frozen=True)
class Decision:
    """The run's phase and the stages to start now."""

    phase: str
    """Pending, Running, Succeeded, Failed or Suspended."""
    reason: str
    """CamelCase reason for the Ready condition."""
    message: str
    start: tuple[Start, ...] = ()
    iteration: int | None = None
    """The lowest iteration with a stage running or starting."""
    stage: str | None = None
    """Those stages of that iteration, comma-separated."""

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


def plan(
    spec: SynPORunSpec,
    observed: Mapping[str, StageState],
    *,
    max_attempts: int = 1,
    elapsed_seconds: float | None = None,
    max_parallel: int | None = None,
) -> Decision:
    """Decide the next step of a run.

    observed: stage key (`i<t>-<stage>`) → state, for every stage ever started.
    max_attempts: starts allowed per stage (1 when the executor retries on its own, as Jobs do).
    elapsed_seconds: time since the run started, for spec.activeDeadlineSeconds.
    max_parallel: cap on stages running at once (None: no cap).
    """
    graph = stage_graph(spec)
    state = {node.key: observed.get(node.key) for node in graph}

    for node in graph:
        seen = state[node.key]
        if seen and seen.phase is StagePhase.FAILED and (seen.attempts >= max_attempts or not seen.retryable):
            detail = f": {seen.message}" if seen.message else ""
            if node.id.name == PREFLIGHT:  # nothing else has started: the message names the spec field
                return Decision("Failed", reasons.PREFLIGHT_FAILED, f"pre-flight check failed{detail}",
                                iteration=0, stage=PREFLIGHT)
            return Decision("Failed", reasons.STAGE_FAILED,
                            f"stage {node.key} failed after {seen.attempts} attempt(s){detail}",
                            iteration=node.id.iteration, stage=node.id.name)

    if all(s and s.phase is StagePhase.SUCCEEDED for s in state.values()):
        return Decision("Succeeded", reasons.RUN_SUCCEEDED,
                        f"all {len(graph)} stages of {spec.iterations} iteration(s) succeeded")

    if (spec.active_deadline_seconds is not None and elapsed_seconds is not None
            and elapsed_seconds > spec.active_deadline_seconds):
        return Decision("Failed", reasons.DEADLINE_EXCEEDED,
                        f"the run exceeded activeDeadlineSeconds={spec.active_deadline_seconds}")

    running = [n for n in graph if state[n.key] and state[n.key].phase is StagePhase.RUNNING]
    if spec.suspend:
        return Decision("Suspended", reasons.SUSPENDED, "spec.suspend is true: no stage starts until it is false")

    def done(key: str) -> bool:
        seen = state.get(key)
        return bool(seen and seen.phase is StagePhase.SUCCEEDED)

    checked = done(graph[0].key)  # the pre-flight: until it passes (again, after a spec change) nothing else starts
    ready: list[Start] = []
    for node in graph:
        seen = state[node.key]
        if seen and seen.phase is not StagePhase.FAILED:
            continue
        if (checked or node.id.name == PREFLIGHT) and all(done(need.key) for need in node.needs):
            ready.append(Start(node, attempt=(seen.attempts + 1) if seen else 1))
    if max_parallel is not None:
        ready = ready[: max(0, max_parallel - len(running))]

    active = running + [s.stage for s in ready]
    if not active:  # unreachable for an acyclic graph; kept so a bug shows as a clear failure, not a hang
        return Decision("Failed", reasons.STUCK, "no stage is running and none can start")
    iteration = min(n.id.iteration for n in active)
    names = ",".join(sorted({n.id.name for n in active if n.id.iteration == iteration}))
    completed = sum(done(n.key) for n in graph)
    return Decision("Running", reasons.STAGE_RUNNING, f"{completed}/{len(graph)} stages done; running {names}",
                    tuple(ready), iteration, names)
