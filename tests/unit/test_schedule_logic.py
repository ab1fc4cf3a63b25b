"""Schedule decisions: CronJob's missed-time rules, concurrency policies, history limits, promotion gate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from synpo_operator.api.schedule import PromotedModel, SynPOScheduleSpec
from synpo_operator.schedule import (
    Evaluation,
    FinishedRun,
    decide,
    promotion_decision,
    run_name,
    runs_to_prune,
)

T0 = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)  # a Monday


def spec(**overrides) -> SynPOScheduleSpec:
    body = {"schedule": "0 * * * *", "runTemplate": {"spec": {
        "model": {"base": "m"}, "data": {"seed": "s", "corpus": "c", "eval": "e"}, "storage": {"uri": "/r"}}}}
    body.update(overrides)
    return SynPOScheduleSpec.model_validate(body)


def test_waits_until_the_first_time_then_creates_it():
    d = decide(spec(), now=T0 + timedelta(minutes=30), created=T0, last_schedule=None, active=[])
    assert d.create is None and d.requeue_at == T0 + timedelta(hours=1)
    d = decide(spec(), now=T0 + timedelta(hours=1, seconds=5), created=T0, last_schedule=None, active=[])
    assert d.create == T0 + timedelta(hours=1) and d.reason == "RunCreated"


def test_missed_times_create_one_run_for_the_latest():
    d = decide(spec(), now=T0 + timedelta(hours=5, minutes=10), created=T0, last_schedule=T0, active=[])
    assert d.create == T0 + timedelta(hours=5) and d.missed == 5


def test_starting_deadline_skips_times_missed_by_too_much():
    s = spec(startingDeadlineSeconds=300)
    d = decide(s, now=T0 + timedelta(hours=5, minutes=10), created=T0, last_schedule=T0, active=[])
    assert d.create is None and d.requeue_at == T0 + timedelta(hours=6)
    d = decide(s, now=T0 + timedelta(hours=5, minutes=4), created=T0, last_schedule=T0, active=[])
    assert d.create == T0 + timedelta(hours=5)


def test_too_many_missed_times_creates_nothing():
    s = spec(schedule="* * * * *")
    d = decide(s, now=T0 + timedelta(hours=3), created=T0, last_schedule=T0, active=[])
    assert d.create is None and d.reason == "TooManyMissedTimes"


def test_time_zone_is_honoured():
    s = spec(schedule="0 2 * * *", timeZone="Asia/Tokyo")  # 02:00 JST = 17:00 UTC
    d = decide(s, now=T0 + timedelta(hours=17, minutes=1), created=T0, last_schedule=None, active=[])
    assert d.create == T0 + timedelta(hours=17)


@pytest.mark.parametrize("policy, create, delete, reason", [
    ("Allow", True, (), "RunCreated"),
    ("Forbid", False, (), "ConcurrencyForbid"),
    ("Replace", True, ("old",), "RunCreated"),
])
def test_concurrency_policies(policy, create, delete, reason):
    d = decide(spec(concurrencyPolicy=policy), now=T0 + timedelta(hours=1), created=T0, last_schedule=None,
               active=["old"])
    assert (d.create is not None, d.delete, d.reason) == (create, delete, reason)


def test_suspend_and_capacity_cap():
    assert decide(spec(suspend=True), now=T0 + timedelta(hours=1), created=T0, last_schedule=None,
                  active=[]).reason == "Suspended"
    d = decide(spec(), now=T0 + timedelta(hours=1), created=T0, last_schedule=None, active=[], capacity_left=0)
    assert d.create is None and d.reason == "ConcurrencyCap"
    # Replace frees a slot by deleting the active run.
    d = decide(spec(concurrencyPolicy="Replace"), now=T0 + timedelta(hours=1), created=T0, last_schedule=None,
               active=["old"], capacity_left=0)
    assert d.create is not None


def test_run_names_are_deterministic_and_short():
    assert run_name("weekly", T0) == run_name("weekly", T0) == f"weekly-{int(T0.timestamp() // 60)}"
    assert len(run_name("a" * 31, T0)) <= 40


def test_history_limits_prune_oldest_first():
    runs = [FinishedRun(f"ok{i}", True, T0 + timedelta(hours=i)) for i in range(5)]
    runs += [FinishedRun(f"bad{i}", False, T0 + timedelta(hours=i)) for i in range(3)]
    assert runs_to_prune(runs, successful_limit=3, failed_limit=1) == ["ok0", "ok1", "bad0", "bad1"]
    assert runs_to_prune(runs, successful_limit=0, failed_limit=0) == [
        "ok0", "ok1", "ok2", "ok3", "ok4", "bad0", "bad1", "bad2"]


def test_promotion_gate_on_win_rate():
    s = spec(promotion={"metric": "winRate", "minImprovement": 0.05})
    assert promotion_decision(s, Evaluation("r1", "/m1", win_rate=0.6), None).promote
    refused = promotion_decision(s, Evaluation("r1", "/m1", win_rate=0.54), None)
    assert not refused.promote and "0.5400" in refused.message and "0.5500" in refused.message
    assert not promotion_decision(s, Evaluation("r1", "/m1"), None).promote


def test_promotion_gate_on_score_compares_with_the_promoted_model():
    s = spec(promotion={"metric": "score", "minImprovement": 0.01})
    first = promotion_decision(s, Evaluation("r1", "/m1", score=0.70, baseline_score=0.60), None)
    assert first.promote and first.incumbent == 0.60
    promoted = PromotedModel(model="/m1", run="r1", metric="score", value=0.70, score=0.70)
    assert not promotion_decision(s, Evaluation("r2", "/m2", score=0.705), promoted).promote
    assert promotion_decision(s, Evaluation("r2", "/m2", score=0.72), promoted).promote
