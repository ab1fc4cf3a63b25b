"""The reconcile step shared by every executor: observe → plan → act → status, with no Kubernetes client.

`reconcile(body, executor, now)` takes the run as the API server returns it (a dict), an executor that can
observe and start its stages, and the time. It starts what the planner says, stops what must stop, and
returns the new status, the events to post and the stage transitions (for metrics). Handlers only feed it
and carry out what it returns, so nearly all of the operator's behaviour is tested here without a cluster.

Also here: pure translations of Job and Pod objects (API JSON, camelCase) into stage records.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from . import clock
from .api.common import Condition
from .api.loader import SpecError, parse_resource
from .api.run import IterationSummary, StageStatus, SynPORun, SynPORunStatus
from .clock import parse_time, rfc3339
from .evaluation_status import evaluation_fields
from .plan.graph import STAGES, StageId, model_artifact, stage_graph
from .plan.planner import Decision, StagePhase, StageState, Start, plan

MAX_MESSAGE = 1024
WAITING_FOR_CAPACITY = "WaitingForCapacity"
CONDITION_TYPES = ("Ready", "Succeeded", "Failed", "Suspended")
RESULT_VALUE = (int, float, str, bool)


# ---- time ---------------------------------------------------------------------------------------------

def now_utc() -> datetime:
    return datetime.now(UTC)


def _clip(text: str, limit: int = MAX_MESSAGE) -> str:
    text = " ".join(text.split()) if "\n" in text else text
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- stage records ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StageRecord:
    """Everything an executor observed about one stage."""

    key: str
    state: StageState
    start_time: str | None = None
    completion_time: str | None = None
    result: dict[str, Any] | None = None
    """Summary from the termination message (succeeded stages)."""
    gpu_seconds: float | None = None
    """GPUs × run time of every pod so far."""
    pod_failures: int = 0
    """Failed pods that counted towards backoffLimit (disruptions excluded)."""
    queued: bool = False
    """The Job exists but is suspended (waiting for Kueue admission)."""
    name: str | None = None
    """The executor's object name (the Job)."""

    @property
    def finished(self) -> bool:
        return self.state.phase is not StagePhase.RUNNING


def parse_summary(message: str | None) -> dict[str, Any] | None:
    """A stage's JSON summary from its termination message; scalar values only (None when not JSON)."""
    if not message:
        return None
    text = message.strip()
    start = text.find("{")
    if start < 0:
        return None
    try:
        doc = json.loads(text[start:])
    except ValueError:
        # FallbackToLogsOnError may append or prepend log lines: take the last line that parses.
        for line in reversed(text.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    doc = json.loads(line)
                    break
                except ValueError:
                    continue
        else:
            return None
    if not isinstance(doc, dict):
        return None
    return {str(k): v for k, v in doc.items() if isinstance(v, RESULT_VALUE) and v is not None}


def merge_results(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One summary from the shards of an Indexed Job: integers are summed, floats averaged, other values
    taken from the first shard that has them."""
    results = [r for r in results if r]
    if not results:
        return None
    if len(results) == 1:
        return dict(results[0])
    merged: dict[str, Any] = {}
    keys: list[str] = []
    for r in results:
        keys += [k for k in r if k not in keys]
    for key in keys:
        values = [r[key] for r in results if key in r]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            merged[key] = sum(values)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            merged[key] = sum(values) / len(values)
        else:
            merged[key] = values[0]
    merged["shards"] = len(results)
    return merged


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
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        limits = (c.get("resources") or {}).get("limits") or {}
        try:
            total += int(limits.get("nvidia.com/gpu", 0))
        except (TypeError, ValueError):
            pass
    return total


def is_disruption(pod: Mapping[str, Any]) -> bool:
    return _condition(pod, "DisruptionTarget") is not None


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


def _owned_by(pod: Mapping[str, Any], uid: str | None) -> bool:
    if not uid:
        return True
    return any(ref.get("uid") == uid for ref in (pod.get("metadata") or {}).get("ownerReferences") or [])


def job_record(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], now: datetime) -> StageRecord:
    """A stage's record from its Job and the Job's pods (API JSON).

    Complete → Succeeded (summary from the pods' termination messages); Failed → Failed with the Job's
    reason, the last failed pod's exit code and termination message; anything else → Running."""
    meta = job.get("metadata") or {}
    labels = meta.get("labels") or {}
    key = labels.get("synpo.dev/stage-key") or (
        f"i{labels.get('synpo.dev/iteration')}-{labels.get('synpo.dev/stage')}")
    status = job.get("status") or {}
    spec = job.get("spec") or {}
    uid = meta.get("uid")
    own = [p for p in pods if _owned_by(p, uid)]
    failed_pods = [p for p in own if (p.get("status") or {}).get("phase") == "Failed" and not is_disruption(p)]
    gpu_seconds = pod_gpu_seconds(own, now)
    if not own and status.get("startTime"):
        # pods gone (garbage-collected): estimate from the Job's own times
        start = parse_time(status.get("startTime"))
        end = parse_time(status.get("completionTime")) or (now if not _condition(job, "Failed") else None)
        gpus = int((meta.get("annotations") or {}).get("synpo.dev/gpus-per-pod", "0") or 0)
        if start and end and end > start:
            gpu_seconds = gpus * int(spec.get("parallelism") or 1) * (end - start).total_seconds()
    try:
        attempt = int((meta.get("annotations") or {}).get("synpo.dev/attempt", "1"))
    except ValueError:
        attempt = 1
    common = dict(key=key, start_time=status.get("startTime") or meta.get("creationTimestamp"),
                  gpu_seconds=round(gpu_seconds, 3), pod_failures=max(len(failed_pods), 0),
                  name=meta.get("name"))

    done = _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet")
    if done:
        summaries = []
        for pod in own:
            if (pod.get("status") or {}).get("phase") == "Succeeded":
                term = _terminated(pod)
                summary = parse_summary(term.get("message") if term else None)
                if summary:
                    summaries.append(summary)
        completion = status.get("completionTime") or done.get("lastTransitionTime")
        return StageRecord(state=StageState(StagePhase.SUCCEEDED, attempt), completion_time=completion,
                           result=merge_results(summaries), **common)

    failed = _condition(job, "Failed") or _condition(job, "FailureTarget")
    if failed:
        reason = failed.get("reason") or "Failed"
        parts = [f"{reason}: {failed.get('message') or 'the Job failed'}"]
        last = None
        for pod in failed_pods:
            term = _terminated(pod)
            if term and (last is None or str(term.get("finishedAt") or "") >= str(last.get("finishedAt") or "")):
                last = term
        if last is not None:
            detail = f"last pod exited with code {last.get('exitCode')}"
            text = (last.get("message") or "").strip()
            summary = parse_summary(text)
            if summary and isinstance(summary.get("error"), str):
                text = summary["error"]
            if text:
                detail += f": {text}"
            parts.append(detail)
        message = _clip("; ".join(parts))
        return StageRecord(state=StageState(StagePhase.FAILED, attempt, message),
                           completion_time=failed.get("lastTransitionTime") or rfc3339(now), **common)

    return StageRecord(state=StageState(StagePhase.RUNNING, attempt),
                       queued=bool(spec.get("suspend")), **common)


# ---- executors ----------------------------------------------------------------------------------------

class RecordingExecutor(Protocol):
    """What reconcile needs from an executor (Jobs, local processes)."""

    def records(self) -> dict[str, StageRecord]:
        """Every stage started and still known, by key (deleted/terminating objects left out)."""
        ...

    def start(self, start: Start) -> bool:
        """Start a stage if absent; True when this call created it."""
        ...

    def stop(self) -> list[str]:
        """Stop every unfinished stage; returns the keys stopped."""
        ...


class ProtocolAdapter:
    """Makes a plain `executors.base.Executor` (observe/start/results/stop) usable by `reconcile`.

    `factory` (optional) builds a fresh executor: after `stop()` the adapter replaces its executor, so stages
    it stopped are forgotten (absent, to be started again on resume) instead of being seen as failed."""

    def __init__(self, executor: Any, factory: Any = None):
        self.executor = executor
        self.factory = factory

    def records(self) -> dict[str, StageRecord]:
        direct = getattr(self.executor, "records", None)
        if callable(direct):
            return direct()
        observed = self.executor.observe()
        try:
            results = self.executor.results()
        except Exception:  # noqa: BLE001 - results are best-effort
            results = {}
        out: dict[str, StageRecord] = {}
        for key, state in observed.items():
            res = results.get(key)
            out[key] = StageRecord(key=key, state=state,
                                   result={k: v for k, v in res.items() if isinstance(v, RESULT_VALUE)}
                                   if isinstance(res, dict) else None)
        return out

    def start(self, start: Start) -> bool:
        result = self.executor.start(start)
        return True if result is None else bool(result)

    def stop(self) -> list[str]:
        active = [k for k, r in self.records().items() if not r.finished]
        result = self.executor.stop()
        if self.factory is not None:
            self.executor = self.factory()
        return list(result) if isinstance(result, (list, tuple, set)) else active


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
                                                         _clip(f"{first.message}; {event.message}"))
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
    error: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.events or self.transitions or self.started or self.stopped)


_PHASE_CONDITIONS = {
    # phase -> {condition type: True?}
    "Succeeded": {"Ready": True, "Succeeded": True, "Failed": False, "Suspended": False},
    "Failed": {"Ready": False, "Succeeded": False, "Failed": True, "Suspended": False},
    "Suspended": {"Ready": False, "Succeeded": False, "Failed": False, "Suspended": True},
    "Running": {"Ready": False, "Succeeded": False, "Failed": False, "Suspended": False},
    "Pending": {"Ready": False, "Succeeded": False, "Failed": False, "Suspended": False},
}


def build_conditions(phase: str, reason: str, message: str, generation: int | None,
                     previous: Iterable[Mapping[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """Ready/Succeeded/Failed/Suspended for a phase; lastTransitionTime kept while a status is unchanged."""
    before = {c.get("type"): c for c in previous or []}
    out = []
    for type_ in CONDITION_TYPES:
        true = _PHASE_CONDITIONS[phase][type_]
        status = "True" if true else "False"
        old = before.get(type_)
        if type_ == "Suspended" and not true:
            if old and old.get("status") == "True":
                c_reason, c_message = "Resumed", "spec.suspend is false"
            elif old:
                c_reason, c_message = old.get("reason") or "NotSuspended", old.get("message") or ""
            else:
                c_reason, c_message = "NotSuspended", ""
        else:
            c_reason, c_message = reason, message
        transition = old.get("lastTransitionTime") if old and old.get("status") == status else None
        cond = Condition(type=type_, status=status, reason=c_reason, message=_clip(c_message, 32768),
                         observed_generation=generation, last_transition_time=transition or rfc3339(now))
        out.append(cond.to_api())
    return out


_RESULT_ALIASES = {
    "pairs_kept": ("pairsKept", "pairs_kept", "kept"),
    "pairs_total": ("pairsTotal", "pairs_total", "totalPairs", "total"),
    "win_rate": ("winRate", "win_rate"),
    "lc_win_rate": ("lcWinRate", "lc_win_rate", "lengthControlledWinRate"),
    "score": ("score", "meanScore", "mean_score"),
    "model": ("model", "modelPath", "model_path"),
}


def _pick(result: Mapping[str, Any] | None, field_name: str) -> Any:
    if not result:
        return None
    for alias in _RESULT_ALIASES[field_name]:
        value = result.get(alias)
        if value is not None and not isinstance(value, bool):
            return value
    return None


def iteration_summaries(run: SynPORun, stages: Mapping[str, StageStatus], artifacts: str,
                        gpu_seconds: Mapping[str, float]) -> list[IterationSummary]:
    """One summary per iteration that has started a stage (0: the once-per-run stages and M0)."""
    by_iteration: dict[int, list[StageStatus]] = {}
    for key, st in stages.items():
        by_iteration.setdefault(StageId.parse(key).iteration, []).append(st)
    out = []
    for t in sorted(by_iteration):
        pairs = stages.get(f"i{t}-pairs")
        evaluate = stages.get(f"i{t}-evaluate")
        train = stages.get(f"i{t}-train")
        kept = _pick(pairs.result if pairs else None, "pairs_kept")
        total = _pick(pairs.result if pairs else None, "pairs_total")
        model = None
        if t == 0:
            model = run.spec.model.base
        elif train is not None and train.phase == "Succeeded":
            model = _pick(train.result, "model") or f"{artifacts}/{model_artifact(StageId(t, 'train'))}"
        gpu = sum(gpu_seconds.get(st.name, 0.0) for st in by_iteration[t])

        def num(value: Any, integer: bool = False) -> Any:
            if value is None:
                return None
            try:
                return int(value) if integer else float(value)
            except (TypeError, ValueError):
                return None

        out.append(IterationSummary(
            index=t,
            pairs_kept=num(kept, True), pairs_total=num(total, True),
            win_rate=num(_pick(evaluate.result if evaluate else None, "win_rate")),
            lc_win_rate=num(_pick(evaluate.result if evaluate else None, "lc_win_rate")),
            score=num(_pick(evaluate.result if evaluate else None, "score")),
            **evaluation_fields(evaluate.result if evaluate else None),
            model=str(model)[:2048] if model else None,
            gpu_seconds=round(gpu, 3) if gpu else (0.0 if by_iteration[t] else None),
        ))
    return out


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


def _stage_status(record: StageRecord, previous: Mapping[str, Any] | None) -> StageStatus:
    result = dict(record.result) if record.result else None
    if result is None and previous and previous.get("result") and record.finished:
        result = dict(previous["result"])
    if record.gpu_seconds and record.finished:
        result = {**(result or {}), "gpuSeconds": record.gpu_seconds}
    return StageStatus(
        name=record.key,
        phase=record.state.phase.value,
        attempts=max(1, record.pod_failures + (0 if record.state.phase is StagePhase.FAILED else 1)),
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
        events.append(Event("Normal", "StageStarted", _clip(f"started {_stages(len(started))} {listed}")))
    succeeded = [tr.key for tr in transitions if tr.new == "Succeeded"]
    if succeeded:
        events.append(Event("Normal", "StageSucceeded", f"{_stages(len(succeeded))} {', '.join(succeeded)} succeeded"))
    for tr in transitions:
        if tr.new == "Failed":
            events.append(Event("Warning", "StageFailed",
                                _clip(f"stage {tr.key} failed: {tr.record.state.message}")))
    return events


def _stages(n: int) -> str:
    return "stage" if n == 1 else "stages"


def reconcile(body: Mapping[str, Any], executor: RecordingExecutor | None, now: datetime | None = None, *,
              executor_check: Any = None, max_attempts: Any = 1, admit: Any = None,
              max_starts: int | None = None) -> Outcome:
    """One reconcile of a run. `executor` is None when the executor cannot be built (bad spec).

    executor_check: optional callable(run) -> list of problems the executor has with the spec (e.g. a
    local storage path for the Jobs executor); problems are reported as InvalidSpec.
    max_attempts: starts per stage (1 for Jobs, which retry pods themselves), or callable(run) -> int.
    admit: optional callable() -> (bool, message), asked before a run that has not started any stage starts
    its first one (the concurrent-run caps); when it says no, nothing starts and the run stays Pending with
    reason WaitingForCapacity.
    max_starts: start at most this many of the ready stages (the others start on a later reconcile)."""
    now = now or clock.now()
    meta = body.get("metadata") or {}
    generation = meta.get("generation")
    previous = dict(body.get("status") or {})
    prev_stages = {s.get("name"): s for s in previous.get("stages") or [] if s.get("name")}
    prev_phase = previous.get("phase")

    try:
        run = run_from_body(body)
        problems = list(executor_check(run)) if executor_check else []
        if problems:
            raise SpecError(f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}", problems)
    except SpecError as err:
        message = _clip("invalid spec: " + "; ".join(err.problems), 4096)
        stopped = executor.stop() if executor is not None else []
        status = dict(previous)
        status.update({
            "observedGeneration": generation,
            "phase": "Failed",
            "conditions": build_conditions("Failed", "InvalidSpec", message, generation,
                                           previous.get("conditions") or [], now),
        })
        status.setdefault("completionTime", rfc3339(now))
        events = [] if (prev_phase == "Failed" and previous.get("observedGeneration") == generation) else [
            Event("Warning", "InvalidSpec", message)]
        return Outcome(status=_normalise(status), phase="Failed", events=events, stopped=stopped, error=message)

    assert executor is not None
    records = executor.records()
    started_at = parse_time(previous.get("startTime"))
    elapsed = (now - started_at).total_seconds() if started_at else None
    observed = observed_for_plan(records, prev_stages.values())
    attempts = max_attempts(run) if callable(max_attempts) else int(max_attempts)
    decision: Decision = plan(run.spec, observed, max_attempts=attempts, elapsed_seconds=elapsed)

    started: list[str] = []
    stopped: list[str] = []
    waiting: str | None = None
    if (decision.phase == "Running" and decision.start and admit is not None and not records
            and not prev_stages and not previous.get("startTime")):
        allowed, why = admit()
        if not allowed:
            waiting = why or "waiting for capacity"
            decision = Decision(phase="Pending", reason=WAITING_FOR_CAPACITY, message=waiting)
    if decision.phase == "Running":
        if max_starts is not None:
            decision = replace(decision, start=decision.start[:max_starts])
        start_many = getattr(executor, "start_many", None)
        if callable(start_many) and len(decision.start) > 1:
            created = start_many(decision.start)  # independent stages: created concurrently
        else:
            created = [executor.start(start) for start in decision.start]
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
    if phase == "Running" and active and all(r.queued for r in active):
        phase, reason = "Pending", "Queued"
        message = "waiting for admission of " + ", ".join(sorted(r.name or r.key for r in active))
    from .executors.manifests import artifacts_uri  # local import: manifests imports the planner too

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
        artifacts=artifacts,
        stages=list(ordered.values()),
    )
    summaries = iteration_summaries(run, ordered, artifacts, gpu)
    status.iterations = summaries[-32:]
    win_rates = [s.win_rate for s in summaries if s.win_rate is not None and s.index > 0] or [
        s.win_rate for s in summaries if s.win_rate is not None]
    status.latest_win_rate = win_rates[-1] if win_rates else None
    status.conditions = [Condition.model_validate(c) for c in build_conditions(
        phase, reason, message, generation, previous.get("conditions") or [], now)]

    events = _events_for(transitions, started, {k: r.name or k for k, r in records.items()})
    if prev_phase != phase:
        if phase == "Succeeded":
            events.append(Event("Normal", "RunSucceeded", message))
        elif phase == "Failed":
            events.append(Event("Warning", reason, _clip(message)))
        elif phase == "Suspended":
            events.append(Event("Normal", "Suspended", message))
        elif prev_phase == "Suspended":
            events.append(Event("Normal", "Resumed", "spec.suspend is false: the run continues"))
    if waiting is not None and (_ready_reason(previous) != WAITING_FOR_CAPACITY):
        events.append(Event("Normal", WAITING_FOR_CAPACITY, _clip(waiting)))
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
    elif not decision.finished and run.spec.active_deadline_seconds is not None and status.start_time:
        begun = parse_time(status.start_time) or now
        outcome.requeue_after = max(0.0, run.spec.active_deadline_seconds - (now - begun).total_seconds()) + 0.5
    return outcome


def _ready_reason(status: Mapping[str, Any]) -> str | None:
    for cond in status.get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            return cond.get("reason")
    return None


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


def all_stage_keys(run: SynPORun) -> list[str]:
    return [n.key for n in stage_graph(run.spec)]


__all__ = [
    "Event", "Outcome", "ProtocolAdapter", "RecordingExecutor", "StageRecord", "Transition",
    "build_conditions", "is_disruption", "iteration_summaries", "job_record", "merge_results",
    "observed_for_plan", "parse_summary", "run_from_body", "parse_time", "reconcile", "replace", "rfc3339", "status_differs",
    "status_patch",
]
