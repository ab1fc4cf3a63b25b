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

from .api.schedule import PromotedModel, SynPOScheduleSpec

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
        return ScheduleDecision(skipped="spec.suspend is true", reason="Suspended", requeue_at=next_time,
                                missed=len(due))
    if not due:
        return ScheduleDecision(requeue_at=next_time, reason="Waiting")
    if len(due) > MAX_MISSED:
        return ScheduleDecision(
            skipped=f"more than {MAX_MISSED} missed start times; set or lower startingDeadlineSeconds",
            reason="TooManyMissedTimes", requeue_at=next_time, missed=len(due))
    latest = due[-1]
    if active and spec.concurrency_policy == "Forbid":
        return ScheduleDecision(skipped=f"run {active[0]} is still active (concurrencyPolicy Forbid)",
                                reason="ConcurrencyForbid", requeue_at=next_time, missed=len(due))
    delete = tuple(active) if spec.concurrency_policy == "Replace" else ()
    if capacity_left is not None and capacity_left + len(delete) <= 0:
        return ScheduleDecision(skipped="the concurrent-run cap is reached; waiting for a free slot",
                                reason="ConcurrencyCap", requeue_at=now + timedelta(seconds=10), missed=len(due))
    return ScheduleDecision(create=latest, delete=delete, reason="RunCreated", requeue_at=next_time,
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
