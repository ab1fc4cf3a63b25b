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
from .api.conditions import clip, ready_reason, schedule_conditions
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
    """What the gate looks at in one finished run: its first judge's figures against its own M0."""

    run: str
    model: str
    """The run's newest trained model (the candidate)."""
    base: str = ""
    """The run's M0 (spec.model.base): the opponent of its figures."""
    m0: dict = field(default_factory=dict)
    """The last evaluated iteration's comparison with M0 (camelCase keys of WinRateFigure: n, winRate,
    winRateLow, winRateHigh, lcWinRate, …); empty when the run reports none."""
    score: float | None = None
    """The last evaluated iteration's mean score (recorded with a promotion, not judged)."""


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    candidate: float | None
    message: str
    evidence: dict = field(default_factory=dict)
    """status.lastPromotion (camelCase)."""


CONFIDENCE = "95%"


def promotion_decision(spec: SynPOScheduleSpec, candidate: Evaluation,
                       promoted: PromotedModel | None) -> PromotionDecision:
    """The promotion gate: the lower end of the metric's 95% interval against the model the candidate would
    replace must exceed 0.5 + minImprovement. That opponent is the run's M0, which in continual mode is the
    promoted model; a run that started from another model (one created before the last promotion) is not
    judged against it, and neither point estimates nor figures against the references count."""
    metric = spec.promotion.metric
    threshold = round(0.5 + spec.promotion.min_improvement, 6)
    rule = (f"promote when the lower end of the {CONFIDENCE} interval of {metric} vs M0 > 0.5 + minImprovement "
            f"= {threshold:.3f}")
    fig = candidate.m0
    evidence = {"run": candidate.run, "promoted": False, "metric": metric, "against": candidate.base or None,
                "n": fig.get("n"), "value": fig.get(metric), "low": fig.get(metric + "Low"),
                "high": fig.get(metric + "High"), "threshold": threshold, "rule": rule}

    def refuse(why: str) -> PromotionDecision:
        return PromotionDecision(False, evidence["value"], f"not promoted {candidate.run}: {why}; rule: {rule}",
                                 evidence)

    if promoted is not None and candidate.base and candidate.base != promoted.model:
        return refuse(f"its M0 is {candidate.base}, not the promoted model {promoted.model} (it started before "
                      f"{promoted.run} was promoted), so its figures are not against the model it would replace")
    if not fig:
        return refuse("it reports no comparison with M0 (is spec.evaluation.baseline true?)")
    value, low, high, n = evidence["value"], evidence["low"], evidence["high"], evidence["n"]
    if value is None:
        reason = fig.get(metric + "Reason")
        return refuse(f"no {metric} vs M0" + (f" ({reason})" if reason else ""))
    if low is None or high is None:
        return refuse(f"{metric} vs M0 {value:.4f} (n = {n}) has no {CONFIDENCE} interval")
    stated = f"{metric} vs M0 {value:.4f}, {CONFIDENCE} interval [{low:.4f}, {high:.4f}], n = {n}"
    if low > threshold:
        evidence["promoted"] = True
        return PromotionDecision(True, value, f"promoted {candidate.run}: {stated}; rule: {rule}", evidence)
    return refuse(f"{stated}: the lower end {low:.4f} does not exceed {threshold:.3f}")


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
    evaluated = [i for i in iterations if i.get("index", 0) > 0 and (i.get("comparisons") or
                 any(i.get(k) is not None for k in ("winRate", "lcWinRate", "score")))]
    last = evaluated[-1] if evaluated else {}
    m0 = next((c for c in last.get("comparisons") or [] if isinstance(c, dict) and c.get("against") == "M0"), None)
    if m0 is None and last.get("against") == "M0":  # the headline figure is the M0 one
        m0 = {k: last.get(k) for k in ("n", "winRate", "winRateLow", "winRateHigh", "lcWinRate",
                                       "lcWinRateReason")}
    trained = [i for i in iterations if i.get("index", 0) > 0 and i.get("model")]
    return Evaluation(run=run["metadata"]["name"], model=(trained[-1]["model"] if trained else ""),
                      base=((run.get("spec") or {}).get("model") or {}).get("base") or "",
                      m0={k: v for k, v in (m0 or {}).items() if v is not None}, score=last.get("score"))


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
    evidence = old.get("lastPromotion")
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
            verdict = PromotionDecision(False, verdict.candidate, f"not promoted {name}: the run reports no "
                                        f"trained model", {**verdict.evidence, "promoted": False})
        decision_text = clip(verdict.message, 1024)
        evidence = verdict.evidence
        out.annotate[name] = "promoted" if verdict.promote else "refused"
        out.promotions.append((name, verdict.promote))
        out.events.append(("Normal" if verdict.promote else "Warning",
                           "ModelPromoted" if verdict.promote else "PromotionRefused", clip(verdict.message)))
        if verdict.promote:
            promoted = PromotedModel(model=candidate.model, run=name, metric=spec.promotion.metric,
                                     value=verdict.candidate, score=candidate.score, promoted_at=rfc3339(now))

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
        "lastPromotion": evidence,
        "conditions": schedule_conditions(
            ready, decision.reason or reasons.WAITING,
            decision.skipped or (f"next run at {rfc3339(decision.requeue_at)}" if decision.requeue_at else ""),
            spec.suspend, generation, old.get("conditions"), now),
    }
    if decision.requeue_at:
        out.requeue_seconds = max(1.0, (decision.requeue_at - now).total_seconds())
    return out
