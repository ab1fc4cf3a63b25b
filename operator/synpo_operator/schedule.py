"""SynPOSchedule logic, pure: when to create a run, what to replace or prune, and whether to promote.

Missed schedules follow CronJob's documented behaviour: the controller looks at the scheduled times between
the last schedule time (or the schedule's creation) and now — only those within startingDeadlineSeconds when
it is set — and creates at most ONE run, for the most recent missed time. More than 100 missed times
without a starting deadline is reported and nothing is created (as CronJob does), so a long outage never
floods the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from .api import conditions as reasons
from .api.conditions import ready_reason, schedule_conditions
from .api.schedule import PromotedModel, SynPOScheduleSpec
from .clock import parse_time, rfc3339

MAX_MISSED = 100


def run_name(schedule: str, scheduled: datetime) -> str:
    """Deterministic run name for a scheduled time (as CronJob names Jobs): restarts never duplicate."""
    return f"{schedule}-{int(scheduled.timestamp() // 60)}"


def _times(spec: SynPOScheduleSpec, start: datetime, end: datetime) -> tuple[list[datetime], datetime]:
    """Scheduled times in (start, end], capped at MAX_MISSED + 1, and the first time after end."""
    zone = ZoneInfo(spec.time_zone or "UTC")
    it = croniter(spec.schedule, start.astimezone(zone))
    times: list[datetime] = []
    while True:
        t = it.get_next(datetime)
        if t > end or len(times) > MAX_MISSED:
            nxt = t if t > end else croniter(spec.schedule, end.astimezone(zone)).get_next(datetime)
            return [x.astimezone(UTC) for x in times], nxt.astimezone(UTC)
        times.append(t)


@dataclass(frozen=True)
class ScheduleDecision:
    create: datetime | None = None
    """Create a run for this scheduled time."""
    delete: tuple[str, ...] = ()
    """Active runs to delete first (concurrencyPolicy Replace)."""
    skipped: str | None = None
    """Why a due time was not acted on (Forbid, suspend, deadline, too many missed, concurrency cap)."""
    reason: str = ""
    """CamelCase reason for conditions and events."""
    requeue_at: datetime | None = None
    """When to look again."""
    missed: int = 0
    """Scheduled times that passed since the last run was created."""


def decide(spec: SynPOScheduleSpec, *, now: datetime, created: datetime, last_schedule: datetime | None,
           active: list[str], capacity_left: int | None = None) -> ScheduleDecision:
    """What a schedule does now.

    active: names of its runs that have not finished. capacity_left: runs the concurrency caps still allow
    (None: unlimited). A time skipped only because of the caps stays due, so it runs once a slot frees up
    (within startingDeadlineSeconds).
    """
    earliest = last_schedule or created
    if spec.starting_deadline_seconds is not None:
        earliest = max(earliest, now - timedelta(seconds=spec.starting_deadline_seconds))
    due, next_time = _times(spec, earliest, now)
    if spec.suspend:
        return ScheduleDecision(skipped="spec.suspend is true", reason=reasons.SUSPENDED, requeue_at=next_time,
                                missed=len(due))
    if not due:
        return ScheduleDecision(requeue_at=next_time, reason=reasons.WAITING)
    if len(due) > MAX_MISSED:
        return ScheduleDecision(
            skipped=f"more than {MAX_MISSED} missed start times; set or lower startingDeadlineSeconds",
            reason=reasons.TOO_MANY_MISSED, requeue_at=next_time, missed=len(due))
    latest = due[-1]
    if active and spec.concurrency_policy == "Forbid":
        return ScheduleDecision(skipped=f"run {active[0]} is still active (concurrencyPolicy Forbid)",
                                reason=reasons.CONCURRENCY_FORBID, requeue_at=next_time, missed=len(due))
    delete = tuple(active) if spec.concurrency_policy == "Replace" else ()
    if capacity_left is not None and capacity_left + len(delete) <= 0:
        return ScheduleDecision(skipped="the concurrent-run cap is reached; waiting for a free slot",
                                reason=reasons.CONCURRENCY_CAP, requeue_at=now + timedelta(seconds=10), missed=len(due))
    return ScheduleDecision(create=latest, delete=delete, reason=reasons.RUN_CREATED, requeue_at=next_time,
                            missed=len(due))


@dataclass(frozen=True)
class FinishedRun:
    name: str
    succeeded: bool
    completion_time: datetime


def runs_to_prune(finished: list[FinishedRun], *, successful_limit: int, failed_limit: int) -> list[str]:
    """Finished runs beyond the history limits, oldest first."""
    doomed: list[str] = []
    for ok, limit in ((True, successful_limit), (False, failed_limit)):
        runs = sorted((r for r in finished if r.succeeded == ok), key=lambda r: r.completion_time, reverse=True)
        doomed += [r.name for r in reversed(runs[limit:])]
    return doomed


@dataclass(frozen=True)
class Evaluation:
    """The numbers of one finished run the gate looks at."""

    run: str
    model: str
    win_rate: float | None = None
    lc_win_rate: float | None = None
    score: float | None = None
    baseline_score: float | None = None
    """The run's M0 (iteration 0) score: the incumbent's score when nothing is promoted yet."""


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    candidate: float | None
    incumbent: float | None
    message: str
    details: dict = field(default_factory=dict)


def promotion_decision(spec: SynPOScheduleSpec, candidate: Evaluation,
                       promoted: PromotedModel | None) -> PromotionDecision:
    """The promotion gate. Pairwise metrics are against the run's own M0 (the promoted model in continual
    mode), so the incumbent is 0.5; score compares absolute mean scores."""
    metric = spec.promotion.metric
    margin = spec.promotion.min_improvement
    value = {"winRate": candidate.win_rate, "lcWinRate": candidate.lc_win_rate, "score": candidate.score}[metric]
    if metric == "score":
        incumbent = promoted.score if promoted and promoted.score is not None else candidate.baseline_score
    else:
        incumbent = 0.5
    if value is None:
        return PromotionDecision(False, None, incumbent,
                                 f"not promoted: run {candidate.run} has no {metric} (is a judge reporting it?)")
    if incumbent is None:
        return PromotionDecision(True, value, None, f"promoted {candidate.run}: {metric} {value:.4f}, "
                                                    f"nothing to compare with")
    beats = value > incumbent + margin
    verdict = "promoted" if beats else "not promoted"
    return PromotionDecision(beats, value, incumbent,
                             f"{verdict} {candidate.run}: {metric} {value:.4f} vs incumbent {incumbent:.4f} "
                             f"(needs > {incumbent + margin:.4f})")


# ---- the whole reconcile step, pure: (schedule, its runs, now) → what to do --------------------------------

SCHEDULE_LABEL = "synpo.dev/schedule"
PROMOTION_ANNOTATION = "synpo.dev/promotion"
FINISHED = ("Succeeded", "Failed")


@dataclass
class ScheduleOutcome:
    status: dict
    """The schedule's new status (camelCase)."""
    create: list[dict] = field(default_factory=list)
    """SynPORun bodies to create (409 AlreadyExists means a previous attempt did: fine)."""
    delete: list[str] = field(default_factory=list)
    """Runs to delete (Replace policy, history limits)."""
    annotate: dict[str, str] = field(default_factory=dict)
    """Run name → promotion verdict to record on it, so each run is judged once."""
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type, reason, message) Events for the schedule."""
    promotions: list[tuple[str, bool]] = field(default_factory=list)
    """(run, promoted) decisions made now, for metrics."""
    missed: int = 0
    """Scheduled times folded into the run created now (missed, as CronJob would: no run of their own)."""
    requeue_seconds: float = 60.0


def _evaluation(run: dict) -> Evaluation:
    status = run.get("status") or {}
    iterations = [i for i in status.get("iterations") or [] if isinstance(i, dict)]
    evaluated = [i for i in iterations if i.get("index", 0) > 0 and
                 any(i.get(k) is not None for k in ("winRate", "lcWinRate", "score"))]
    last = evaluated[-1] if evaluated else {}
    trained = [i for i in iterations if i.get("index", 0) > 0 and i.get("model")]
    baseline = next((i for i in iterations if i.get("index") == 0), {})
    return Evaluation(run=run["metadata"]["name"], model=(trained[-1]["model"] if trained else ""),
                      win_rate=last.get("winRate"), lc_win_rate=last.get("lcWinRate"), score=last.get("score"),
                      baseline_score=baseline.get("score"))


def reconcile_schedule(body: dict, runs: list[dict], *, now: datetime,
                       capacity_left: int | None = None) -> ScheduleOutcome:
    """One step of a schedule. `body`: the SynPOSchedule as served; `runs`: the SynPORuns it owns."""
    from .api.schedule import SynPOSchedule

    meta = body["metadata"]
    schedule = SynPOSchedule.model_validate({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    spec = schedule.spec
    old = body.get("status") or {}
    promoted = PromotedModel.model_validate(old["promoted"]) if old.get("promoted") else None
    out = ScheduleOutcome(status={})

    def phase(run: dict) -> str:
        return (run.get("status") or {}).get("phase") or "Pending"

    # 1. The promotion gate, once per finished successful run, oldest first.
    last_success = parse_time(old.get("lastSuccessfulTime"))
    decision_text = old.get("lastPromotionDecision")
    succeeded = sorted((r for r in runs if phase(r) == "Succeeded"),
                       key=lambda r: (r.get("status") or {}).get("completionTime") or "")
    for run in succeeded:
        done_at = parse_time((run.get("status") or {}).get("completionTime"))
        if done_at and (last_success is None or done_at > last_success):
            last_success = done_at
        name = run["metadata"]["name"]
        if not spec.promotion.enabled or PROMOTION_ANNOTATION in (run["metadata"].get("annotations") or {}):
            continue
        if promoted is not None and promoted.run == name:
            # promoted by an earlier step whose annotation write was lost: record it, judge nothing again
            out.annotate[name] = "promoted"
            continue
        candidate = _evaluation(run)
        verdict = promotion_decision(spec, candidate, promoted)
        if verdict.promote and not candidate.model:
            verdict = PromotionDecision(False, verdict.candidate, verdict.incumbent,
                                        f"not promoted {name}: the run reports no trained model")
        decision_text = verdict.message
        out.annotate[name] = "promoted" if verdict.promote else "refused"
        out.promotions.append((name, verdict.promote))
        out.events.append(("Normal" if verdict.promote else "Warning",
                           "ModelPromoted" if verdict.promote else "PromotionRefused", verdict.message))
        if verdict.promote:
            score = candidate.score if candidate.score is not None else (promoted.score if promoted else None)
            promoted = PromotedModel(model=candidate.model, run=name, metric=spec.promotion.metric,
                                     value=verdict.candidate, score=score, promoted_at=rfc3339(now))

    # 2. History limits.
    finished = [FinishedRun(r["metadata"]["name"], phase(r) == "Succeeded",
                            parse_time((r.get("status") or {}).get("completionTime")) or now)
                for r in runs if phase(r) in FINISHED]
    out.delete += runs_to_prune(finished, successful_limit=spec.successful_runs_history_limit,
                                failed_limit=spec.failed_runs_history_limit)

    # 3. Whether a run is due.
    active = sorted(r["metadata"]["name"] for r in runs if phase(r) not in FINISHED)
    created = parse_time(meta.get("creationTimestamp")) or now
    last_schedule = parse_time(old.get("lastScheduleTime"))
    decision = decide(spec, now=now, created=created, last_schedule=last_schedule, active=active,
                      capacity_left=capacity_left)
    if decision.delete:
        out.delete += list(decision.delete)
        out.events.append(("Normal", "RunReplaced", f"deleting active run(s) {', '.join(decision.delete)} "
                                                    f"(concurrencyPolicy Replace)"))
        active = [a for a in active if a not in decision.delete]
    if decision.create is not None:
        name = run_name(meta["name"], decision.create)
        run_spec = spec.run_template.spec.to_api()
        if spec.promotion.enabled and promoted:
            run_spec["model"]["base"] = promoted.model
        out.create.append({
            "apiVersion": "synpo.dev/v1alpha1", "kind": "SynPORun",
            "metadata": {
                "name": name, "namespace": meta.get("namespace"),
                "labels": {**spec.run_template.metadata.labels, SCHEDULE_LABEL: meta["name"]},
                "annotations": {**spec.run_template.metadata.annotations,
                                "synpo.dev/scheduled-at": rfc3339(decision.create)},
                "ownerReferences": [{"apiVersion": "synpo.dev/v1alpha1", "kind": "SynPOSchedule",
                                     "name": meta["name"], "uid": meta["uid"], "controller": True,
                                     "blockOwnerDeletion": True}],
            },
            "spec": run_spec,
        })
        active.append(name)
        last_schedule = decision.create
        out.missed = max(0, decision.missed - 1)
        out.events.append(("Normal", "RunCreated", f"created run {name} for {rfc3339(decision.create)}"
                           + (f" from promoted model of {promoted.run}" if promoted and spec.promotion.enabled
                              else "")
                           + (f" ({out.missed} earlier missed time(s) skipped)" if out.missed else "")))
    elif decision.skipped and decision.missed and ready_reason(old) != decision.reason:
        # once per episode (the Ready condition keeps the reason), not at every step
        out.events.append(("Warning" if decision.reason == reasons.TOO_MANY_MISSED else "Normal",
                           decision.reason, decision.skipped))

    ready = decision.reason != reasons.TOO_MANY_MISSED
    generation = meta.get("generation")
    out.status = {
        "observedGeneration": generation,
        "active": sorted(active),
        "lastScheduleTime": rfc3339(last_schedule) if last_schedule else None,
        "lastSuccessfulTime": rfc3339(last_success) if last_success else None,
        "promoted": promoted.to_api() if promoted else None,
        "lastPromotionDecision": decision_text,
        "conditions": schedule_conditions(
            ready, decision.reason or reasons.WAITING,
            decision.skipped or (f"next run at {rfc3339(decision.requeue_at)}" if decision.requeue_at else ""),
            spec.suspend, generation, old.get("conditions"), now),
    }
    if decision.requeue_at:
        out.requeue_seconds = max(1.0, (decision.requeue_at - now).total_seconds())
    return out
