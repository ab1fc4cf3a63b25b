"""The reconcile step shared by every executor and both commands: observe → plan → act → status.

`reconcile(body, executor, now)` takes the run as the API server returns it (a dict; `synpo run` builds the
same dict from the file), an `plan.executor.Executor` (Jobs or local processes), and the time. It starts
what the planner says, stops what must stop, and returns the new status, the events to post and the stage
transitions (for metrics). The controller (and `synpo run`) only feed it and carry out what it returns, so
nearly all of the operator's behaviour is tested here without a cluster. No Kubernetes client here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from . import clock
from .api import conditions as reasons
from .api.common import Condition
from .api.conditions import STAGE_STUCK, clip, ready_reason, run_conditions, stuck_condition
from .api.evaluation import evaluation_fields, report_uri
from .api.loader import SpecError, parse_resource
from .api.preflight import SPEC_KEY, spec_key
from .api.results import LC_WIN_RATE, MODEL, PAIRS_KEPT, PAIRS_TOTAL, SCORE, WIN_RATE, number
from .api.run import IterationSummary, StageStatus, SynPORun, SynPORunStatus
from .clock import parse_time, rfc3339
from .executors.stuck import stuck_timeout
from .plan.executor import Executor, StageRecord, StageRefused
from .plan.graph import PREFLIGHT_KEY, STAGES, StageId, model_artifact
from .plan.planner import Decision, StagePhase, StageState, plan
from .plan.resources import global_batch_problems
from .plan.stage_config import artifacts_uri

# ---- status -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


def merge_events(events: Iterable[Event]) -> list[Event]:
    """One Event per type and reason, messages joined in order (Events held back over several reconciles)."""
    merged: dict[tuple[str, str], Event] = {}
    for event in events:
        key = (event.type, event.reason)
        first = merged.get(key)
        merged[key] = event if first is None else Event(event.type, event.reason,
                                                         clip(f"{first.message}; {event.message}"))
    return list(merged.values())


@dataclass(frozen=True)
class Transition:
    """A stage that changed phase in this reconcile (or was first seen)."""

    key: str
    old: str | None
    new: str
    record: StageRecord


@dataclass
class Outcome:
    status: dict[str, Any]
    phase: str
    events: list[Event] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    delete_run: bool = False
    """TTL after finish has passed: the handler deletes the run."""
    requeue_after: float | None = None
    """When something time-based happens next (deadline, TTL), in seconds."""
    retries: dict[str, int] = field(default_factory=dict)
    """New pod failures (retries) per stage key since the last status."""


def iteration_summaries(run: SynPORun, stages: Mapping[str, StageStatus], artifacts: str,
                        gpu_seconds: Mapping[str, float]) -> list[IterationSummary]:
    """One summary per iteration that has started a stage (0: the once-per-run stages and M0)."""
    by_iteration: dict[int, list[StageStatus]] = {}
    for key, st in stages.items():
        by_iteration.setdefault(StageId.parse(key).iteration, []).append(st)
    out = []
    for t in sorted(by_iteration):
        pairs = _result(stages.get(f"i{t}-pairs"))
        evaluate = _result(stages.get(f"i{t}-evaluate"))
        train = stages.get(f"i{t}-train")
        model = None
        if t == 0:
            model = run.spec.model.base
        elif train is not None and train.phase == "Succeeded":
            model = _result(train).get(MODEL) or f"{artifacts}/{model_artifact(StageId(t, 'train'))}"
        gpu = sum(gpu_seconds.get(st.name, 0.0) for st in by_iteration[t])

        out.append(IterationSummary(
            index=t,
            pairs_kept=number(pairs.get(PAIRS_KEPT), True), pairs_total=number(pairs.get(PAIRS_TOTAL), True),
            win_rate=number(evaluate.get(WIN_RATE)),
            lc_win_rate=number(evaluate.get(LC_WIN_RATE)),
            score=number(evaluate.get(SCORE)),
            **evaluation_fields(evaluate),
            model=str(model)[:2048] if model else None,
            gpu_seconds=round(gpu, 3) if gpu else (0.0 if by_iteration[t] else None),
        ))
    return out


def _result(stage: StageStatus | None) -> Mapping[str, Any]:
    return (stage.result if stage else None) or {}


def _stage_order(key: str) -> tuple[int, int, str]:
    try:
        sid = StageId.parse(key)
        return (sid.iteration, STAGES.index(sid.name), key)
    except ValueError:
        return (10**6, 0, key)


def observed_for_plan(records: Mapping[str, StageRecord],
                      previous_stages: Iterable[Mapping[str, Any]]) -> dict[str, StageState]:
    """The planner's view: live records, plus stages the status already recorded as Succeeded whose
    objects are gone (a finished stage is never redone)."""
    observed = {key: rec.state for key, rec in records.items()}
    for st in previous_stages or []:
        name = st.get("name")
        if name and name not in observed and st.get("phase") == "Succeeded":
            observed[name] = StageState(StagePhase.SUCCEEDED, int(st.get("attempts") or 1))
    return observed


def stale_preflight(run: SynPORun, records: Mapping[str, StageRecord],
                    previous: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The pre-flight's key when its recorded result names another spec than the run's (api/preflight.py):
    a passed pre-flight holds for the spec it checked only. None when it is current, unknown or not done."""
    key = PREFLIGHT_KEY
    rec = records.get(key)
    if rec is not None:
        result = rec.result if rec.state.phase is StagePhase.SUCCEEDED else None
    else:
        old = previous.get(key) or {}
        result = old.get("result") if old.get("phase") == "Succeeded" else None
    checked = (result or {}).get(SPEC_KEY)
    return key if checked and checked != spec_key(run.spec.to_api()) else None


def _stuck_parts(records: Mapping[str, StageRecord]) -> list[tuple[str, str]]:
    """(reason, message) of each running stuck stage, in stage order (the StageStuck condition)."""
    return [(rec.stuck.reason, f"{_stuck_prefix(key, rec.stuck.reason)}: {rec.stuck.message}")
            for key, rec in sorted(records.items(), key=lambda kv: _stage_order(kv[0]))
            if rec.stuck is not None and not rec.finished]


def _stuck_prefix(key: str, reason: str) -> str:
    return f"stage {key} is stuck ({reason})"


def _stuck_events(parts: list[tuple[str, str]], previous: Iterable[Mapping[str, Any]]) -> list[Event]:
    """An Event per stage newly stuck, or stuck for a new reason (its reason is the cause's): a Warning, but
    for a pod that only waits for resources other pods hold (Normal on a busy cluster)."""
    old = next((c for c in previous or [] if isinstance(c, Mapping) and c.get("type") == STAGE_STUCK
                and c.get("status") == "True"), None)
    said = str((old or {}).get("message") or "")
    return [Event("Normal" if reason == reasons.WAITING_FOR_RESOURCES else "Warning", reason, clip(text))
            for reason, text in parts if text.split(": ", 1)[0] not in said]


def _stage_status(record: StageRecord, previous: Mapping[str, Any] | None) -> StageStatus:
    result = dict(record.result) if record.result else None
    if result is None and previous and previous.get("result") and record.finished:
        result = dict(previous["result"])
    if record.gpu_seconds and record.finished:
        result = {**(result or {}), "gpuSeconds": record.gpu_seconds}
    return StageStatus(
        name=record.key,
        phase=record.state.phase.value,
        # Jobs retry pods themselves (pod failures count the attempts); local stages are started again
        attempts=max(record.state.attempts,
                     record.pod_failures + (0 if record.state.phase is StagePhase.FAILED else 1)),
        start_time=record.start_time or (previous or {}).get("startTime"),
        completion_time=record.completion_time if record.finished else None,
        message=record.state.message or None,
        result=result,
    )


def run_from_body(body: Mapping[str, Any]) -> SynPORun:
    meta = body.get("metadata") or {}
    doc = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta[k] for k in ("name", "namespace", "labels", "annotations", "uid") if k in meta},
        "spec": body.get("spec") or {},
    }
    resource = parse_resource(doc, f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}")
    if not isinstance(resource, SynPORun):  # pragma: no cover - only SynPORuns reach here
        raise SpecError("resource", ["kind: must be SynPORun"])
    return resource


def _events_for(transitions: list[Transition], started: list[str], names: Mapping[str, str]) -> list[Event]:
    """At most one Event per reason and reconcile (a run's first reconcile starts three stages: one write,
    not three); failures stay one Event each, since each carries its own message."""
    events = []
    if started:
        listed = ", ".join(f"{key} (Job {names.get(key, key)})" for key in started)
        events.append(Event("Normal", "StageStarted", clip(f"started {_stages(len(started))} {listed}")))
    succeeded = [tr.key for tr in transitions if tr.new == "Succeeded"]
    if succeeded:
        events.append(Event("Normal", "StageSucceeded", f"{_stages(len(succeeded))} {', '.join(succeeded)} succeeded"))
    for tr in transitions:
        if tr.new == "Failed":
            events.append(Event("Warning", "StageFailed",
                                clip(f"stage {tr.key} failed: {tr.record.state.message}")))
    return events


def _refused(previous: dict[str, Any], generation: Any, reason: str, message: str, executor: Executor | None,
             now: datetime) -> Outcome:
    """The run Failed for a reason retrying cannot fix (a bad spec, a Job the cluster refuses): unfinished
    stages stopped, finished ones kept in the status, one Warning Event per generation."""
    message = clip(message, 4096)
    stopped = executor.stop() if executor is not None else []
    status = dict(previous)
    status.update({
        "observedGeneration": generation,
        "phase": "Failed",
        "conditions": run_conditions("Failed", reason, message, generation, previous.get("conditions") or [], now),
    })
    status.setdefault("completionTime", rfc3339(now))
    repeated = previous.get("phase") == "Failed" and previous.get("observedGeneration") == generation \
        and ready_reason(previous) == reason
    events = [] if repeated else [Event("Warning", reason, message)]
    return Outcome(status=_normalise(status), phase="Failed", events=events, stopped=stopped)


def _stages(n: int) -> str:
    return "stage" if n == 1 else "stages"


def reconcile(body: Mapping[str, Any], executor: Executor | None, now: datetime | None = None, *,
              executor_check: Any = None, max_attempts: Any = 1, admit: Any = None,
              max_starts: int | None = None, max_parallel: int | None = None) -> Outcome:
    """One reconcile of a run. `executor` is None when the executor cannot be built (bad spec).

    executor_check: optional callable(run) -> list of problems the executor has with the spec (e.g. a
    local storage path for the Jobs executor); problems are reported as InvalidSpec.
    max_attempts: starts per stage (1 for Jobs, which retry pods themselves), or callable(run) -> int.
    admit: optional callable() -> (bool, message), asked before a run that has not started any stage starts
    its first one (the concurrent-run caps); when it says no, nothing starts and the run stays Pending with
    reason WaitingForCapacity.
    max_starts: start at most this many of the ready stages (the others start on a later reconcile).
    max_parallel: cap on stages running at once (`synpo run --parallel`)."""
    now = now or clock.now()
    meta = body.get("metadata") or {}
    generation = meta.get("generation")
    previous = dict(body.get("status") or {})
    prev_stages = {s.get("name"): s for s in previous.get("stages") or [] if s.get("name")}
    prev_phase = previous.get("phase")

    try:
        run = run_from_body(body)
        problems = global_batch_problems(run.spec) + (list(executor_check(run)) if executor_check else [])
        if problems:
            raise SpecError(f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}", problems)
    except SpecError as err:
        return _refused(previous, generation, reasons.INVALID_SPEC, "invalid spec: " + "; ".join(err.problems),
                        executor, now)

    assert executor is not None
    if ready_reason(previous) == reasons.JOB_REFUSED and previous.get("observedGeneration") == generation:
        # refused for good: only a new generation (a fixed spec) tries again
        return Outcome(status=_normalise(previous), phase="Failed")
    records = executor.records()
    stale = stale_preflight(run, records, prev_stages)
    if ready_reason(previous) == reasons.PREFLIGHT_FAILED and previous.get("observedGeneration") != generation:
        stale = PREFLIGHT_KEY  # failed on an older spec: the edited one is checked afresh
    if stale is not None:  # it checked an older spec: checked again before anything else starts
        executor.discard([stale])
        records = {k: r for k, r in records.items() if k != stale}
        prev_stages.pop(stale, None)
    elapsed = active_seconds(previous, now)
    observed = observed_for_plan(records, prev_stages.values())
    attempts = max_attempts(run) if callable(max_attempts) else int(max_attempts)
    decision: Decision = plan(run.spec, observed, max_attempts=attempts, elapsed_seconds=elapsed,
                              max_parallel=max_parallel)

    started: list[str] = []
    stopped: list[str] = []
    waiting: str | None = None
    if (decision.phase == "Running" and decision.start and admit is not None and not records
            and not prev_stages and not previous.get("startTime")):
        allowed, why = admit()
        if not allowed:
            waiting = why or "waiting for capacity"
            decision = Decision(phase="Pending", reason=reasons.WAITING_FOR_CAPACITY, message=waiting)
    if decision.phase == "Running":
        if max_starts is not None:
            decision = replace(decision, start=decision.start[:max_starts])
        try:
            created = executor.start(decision.start) if decision.start else []
        except StageRefused as err:
            return _refused(previous, generation, reasons.JOB_REFUSED, f"stage {err.key}: {err.message}",
                            executor, now)
        started = [start.stage.key for start, ok in zip(decision.start, created, strict=True) if ok]
        if decision.start:
            records = executor.records()
    elif decision.phase in ("Suspended", "Failed") and any(not r.finished for r in records.values()):
        stopped = executor.stop()
        records = {k: r for k, r in records.items() if r.finished or k not in stopped}

    # stages: live records, plus finished stages from the previous status whose objects are gone
    stages: dict[str, StageStatus] = {}
    gpu: dict[str, float] = {}
    for key, rec in records.items():
        stages[key] = _stage_status(rec, prev_stages.get(key))
        # finished stages only: a running pod's GPU time grows with the clock, and counting it would change
        # the status (a write, a watch event, another reconcile) on every reconcile while a GPU pod runs
        gpu[key] = (rec.gpu_seconds or 0.0) if rec.finished else 0.0
    for key, st in prev_stages.items():
        if key not in stages and st.get("phase") in ("Succeeded", "Failed"):
            try:
                stages[key] = StageStatus.model_validate(st)
            except Exception:  # noqa: BLE001 - a malformed old entry is dropped, not fatal
                continue
            gpu[key] = float((st.get("result") or {}).get("gpuSeconds") or 0.0)
    ordered = dict(sorted(stages.items(), key=lambda kv: _stage_order(kv[0]))[-512:])

    transitions = []
    retries: dict[str, int] = {}
    for key, rec in records.items():
        old = prev_stages.get(key)
        old_phase = old.get("phase") if old else None
        if old_phase != rec.state.phase.value:
            transitions.append(Transition(key, old_phase, rec.state.phase.value, rec))
        prev_attempts = int((old or {}).get("attempts") or 1)
        prev_failures = prev_attempts if old_phase == "Failed" else prev_attempts - 1
        new_failures = rec.pod_failures - max(prev_failures, 0)
        if new_failures > 0:
            retries[key] = new_failures

    phase, reason, message = decision.phase, decision.reason, decision.message
    active = [r for r in records.values() if not r.finished]
    queued = phase == "Running" and bool(active) and all(r.queued for r in active)
    if queued:
        phase, reason = "Pending", reasons.QUEUED
        message = "waiting for admission of " + "; ".join(
            f"{r.name or r.key}" + (f": {r.state.message}" if r.state.message else "")
            for r in sorted(active, key=lambda r: r.name or r.key))
    artifacts = artifacts_uri(run)
    status = SynPORunStatus(
        observed_generation=generation,
        phase=phase,
        iteration=decision.iteration if decision.iteration is not None else (
            run.spec.iterations if phase == "Succeeded" else previous.get("iteration")),
        stage=decision.stage,
        start_time=previous.get("startTime") or (
            rfc3339(now) if phase in ("Running", "Pending") and waiting is None else None),
        completion_time=(previous.get("completionTime") or rfc3339(now)) if decision.finished else None,
        **queue_clock(previous, queued, now),
        artifacts=artifacts,
        stages=list(ordered.values()),
    )
    summaries = iteration_summaries(run, ordered, artifacts, gpu)
    status.iterations = summaries[-32:]
    evaluated = [s for s in summaries if s.win_rate is not None and s.index > 0] or [
        s for s in summaries if s.win_rate is not None]
    if evaluated:
        latest = evaluated[-1]
        status.latest_win_rate, status.latest_win_rate_against, status.latest_win_rate_n = (
            latest.win_rate, latest.against, latest.n)
    status.report = report_uri(artifacts, [st.result for key, st in ordered.items() if key.endswith("-evaluate")])
    status.conditions = [Condition.model_validate(c) for c in run_conditions(
        phase, reason, message, generation, previous.get("conditions") or [], now)]
    stuck_parts = _stuck_parts(records) if phase in ("Running", "Pending") else []
    stuck = stuck_condition(stuck_parts, generation, previous.get("conditions") or [], now)
    if stuck is not None:
        status.conditions.append(Condition.model_validate(stuck))

    events = _events_for(transitions, started, {k: r.name or k for k, r in records.items()})
    events += _stuck_events(stuck_parts, previous.get("conditions") or [])
    if prev_phase != phase:
        if phase == "Succeeded":
            events.append(Event("Normal", reasons.RUN_SUCCEEDED, message))
        elif phase == "Failed":
            events.append(Event("Warning", reason, clip(message)))
        elif phase == "Suspended":
            events.append(Event("Normal", reasons.SUSPENDED, message))
        elif prev_phase == "Suspended":
            events.append(Event("Normal", reasons.RESUMED, "spec.suspend is false: the run continues"))
    if waiting is not None and ready_reason(previous) != reasons.WAITING_FOR_CAPACITY:
        events.append(Event("Normal", reasons.WAITING_FOR_CAPACITY, clip(waiting)))
    if stopped:
        events.append(Event("Normal", "StagesStopped", f"deleted the Jobs of {', '.join(sorted(stopped))}"))
    outcome = Outcome(status=_normalise(status.to_api()), phase=phase, events=events, transitions=transitions,
                      started=started, stopped=stopped, retries=retries)

    # time-based follow-ups: TTL after finish, run deadline
    if decision.finished and run.spec.ttl_seconds_after_finished is not None:
        finished_at = parse_time(status.completion_time) or now
        left = run.spec.ttl_seconds_after_finished - (now - finished_at).total_seconds()
        if left <= 0:
            outcome.delete_run = True
        else:
            outcome.requeue_after = left
    elif (not queued  # while queued the deadline clock stands still (Kueue's Workloads are watched)
          and not decision.finished and run.spec.active_deadline_seconds is not None and status.start_time):
        active_for = active_seconds(status.to_api(), now) or 0.0
        outcome.requeue_after = max(0.0, run.spec.active_deadline_seconds - active_for) + 0.5
    # a stuck stage fails stuckPodTimeoutSeconds (the pre-flight: its grace) after it got stuck, whether or not
    # anything else happens
    for key, rec in records.items():
        if rec.stuck is not None and not rec.stuck.waits and not rec.finished and not decision.finished:
            since = parse_time(rec.stuck.since) or now
            left = stuck_timeout(rec.stuck, key, run.spec.stuck_pod_timeout_seconds) - (now - since).total_seconds() + 0.5
            due = left if outcome.requeue_after is None else min(left, outcome.requeue_after)
            outcome.requeue_after = max(0.5, due)
    return outcome


def queue_clock(previous: Mapping[str, Any], queued: bool, now: datetime) -> dict[str, Any]:
    """The status fields that take queued time out of the run's deadline: `queuedSince` (set while every
    unfinished stage waits for admission) and `queuedSeconds` (earlier such intervals, summed)."""
    total = int(previous.get("queuedSeconds") or 0)
    since = parse_time(previous.get("queuedSince"))
    if queued:
        return {"queued_seconds": total or None, "queued_since": rfc3339(since or now)}
    if since is not None:
        total += max(0, round((now - since).total_seconds()))
    return {"queued_seconds": total or None, "queued_since": None}


def active_seconds(status: Mapping[str, Any], now: datetime) -> float | None:
    """Seconds the run has counted against spec.activeDeadlineSeconds: since status.startTime, less the time
    every unfinished stage waited in a queue (as a Job's own deadline does not count while it is suspended).
    None before the run starts."""
    started = parse_time(status.get("startTime"))
    if started is None:
        return None
    queued = float(status.get("queuedSeconds") or 0)
    since = parse_time(status.get("queuedSince"))
    if since is not None:
        queued += max(0.0, (now - since).total_seconds())
    return max(0.0, (now - started).total_seconds() - queued)


def _normalise(status: Mapping[str, Any]) -> dict[str, Any]:
    """Status as written (camelCase, no None values), validated against the model (so against the CRD)."""
    clean = {k: v for k, v in status.items() if v is not None}
    return SynPORunStatus.model_validate(clean).to_api()


def status_differs(old: Mapping[str, Any] | None, new: Mapping[str, Any],
                   normalise: Callable[[Mapping[str, Any]], Any] | None = None) -> bool:
    """True when writing `new` would change the stored status (volatile fields compared as they are).
    `normalise` puts both in canonical form (default: a run's status)."""
    normalise = normalise or _normalise

    def canonical(status: Mapping[str, Any]) -> str:
        try:
            status = normalise(status)
        except Exception:  # noqa: BLE001 - an unreadable old status always differs
            pass
        return json.dumps(status, sort_keys=True, default=str)

    return canonical(old or {}) != canonical(new)


def status_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning `old` into `new` (top-level keys; removed keys set to null)."""
    patch: dict[str, Any] = dict(new)
    for key in (old or {}):
        if key not in new:
            patch[key] = None
    return patch


__all__ = [
    "Event", "Outcome", "Transition", "active_seconds", "iteration_summaries",
    "merge_events", "observed_for_plan", "queue_clock", "reconcile", "run_from_body", "status_differs",
    "status_patch",
]
