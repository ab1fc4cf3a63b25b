"""Schedule decisions: CronJob's missed-time rules, concurrency policies, history limits, promotion gate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from synpo_operator.api.schedule import PromotedModel, SynPOScheduleSpec
from synpo_operator.schedule import (
    PROMOTION_ANNOTATION,
    SCHEDULE_LABEL,
    Evaluation,
    FinishedRun,
    decide,
    promotion_decision,
    reconcile_schedule,
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


# --- the pure reconcile step ------------------------------------------------------------------------------

def schedule_body(**spec_overrides) -> dict:
    return {"apiVersion": "synpo.dev/v1alpha1", "kind": "SynPOSchedule",
            "metadata": {"name": "hourly", "namespace": "ns", "uid": "u-1", "generation": 1,
                         "creationTimestamp": "2026-11-02T00:00:00Z"},
            "spec": spec(**spec_overrides).to_api()}


def run_body(name: str, phase: str, completed: str | None = None, iterations=None, annotations=None) -> dict:
    return {"metadata": {"name": name, "annotations": annotations or {}},
            "status": {"phase": phase, "completionTime": completed, "iterations": iterations or []}}


def test_reconcile_creates_an_owned_run_with_the_template():
    out = reconcile_schedule(schedule_body(), [], now=T0 + timedelta(hours=1, seconds=1))
    (run,) = out.create
    assert run["metadata"]["name"] == run_name("hourly", T0 + timedelta(hours=1))
    assert run["metadata"]["labels"][SCHEDULE_LABEL] == "hourly"
    assert run["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert run["spec"]["model"]["base"] == "m"
    assert out.status["active"] == [run["metadata"]["name"]]
    assert out.status["lastScheduleTime"] == "2026-11-02T01:00:00Z"


def test_reconcile_promotes_then_starts_from_the_promoted_model():
    done = run_body("hourly-1", "Succeeded", "2026-11-02T00:50:00Z",
                    iterations=[{"index": 0, "score": 0.5}, {"index": 1, "winRate": 0.7, "score": 0.6,
                                                             "model": "/ws/ns/hourly-1/iter-1/train/model"}])
    out = reconcile_schedule(schedule_body(), [done], now=T0 + timedelta(hours=1, seconds=1))
    assert out.annotate == {"hourly-1": "promoted"} and out.promotions == [("hourly-1", True)]
    assert out.status["promoted"]["model"] == "/ws/ns/hourly-1/iter-1/train/model"
    assert out.create[0]["spec"]["model"]["base"] == "/ws/ns/hourly-1/iter-1/train/model"
    assert "promoted hourly-1: winRate 0.7000" in out.status["lastPromotionDecision"]
    assert ("Normal", "ModelPromoted") == out.events[0][:2]
    # Judged once: the annotation stops a second verdict.
    done["metadata"]["annotations"][PROMOTION_ANNOTATION] = "promoted"
    again = reconcile_schedule({**schedule_body(), "status": out.status}, [done],
                               now=T0 + timedelta(hours=1, seconds=30))
    assert again.promotions == [] and again.create == []


def test_reconcile_refuses_a_worse_model_and_keeps_the_old_base():
    worse = run_body("hourly-2", "Succeeded", "2026-11-02T00:50:00Z",
                     iterations=[{"index": 1, "winRate": 0.4, "model": "/m2"}])
    out = reconcile_schedule(schedule_body(), [worse], now=T0 + timedelta(hours=1, seconds=1))
    assert out.annotate == {"hourly-2": "refused"} and out.status["promoted"] is None
    assert out.create[0]["spec"]["model"]["base"] == "m"
    assert out.events[0][:2] == ("Warning", "PromotionRefused")


def test_reconcile_prunes_history_and_respects_forbid():
    runs = [run_body(f"ok{i}", "Succeeded", f"2026-11-02T00:0{i}:00Z",
                     annotations={PROMOTION_ANNOTATION: "refused"}) for i in range(3)]
    runs.append(run_body("live", "Running"))
    out = reconcile_schedule(schedule_body(successfulRunsHistoryLimit=1), runs,
                             now=T0 + timedelta(hours=1, seconds=1))
    assert out.delete == ["ok0", "ok1"] and out.create == []
    assert out.status["conditions"][0]["reason"] == "ConcurrencyForbid"


def test_reconcile_keeps_condition_times_and_reports_a_skip_once():
    live = run_body("live", "Running")
    first = reconcile_schedule(schedule_body(), [live], now=T0 + timedelta(hours=1, seconds=1))
    assert [e[1] for e in first.events] == ["ConcurrencyForbid"]
    later = reconcile_schedule({**schedule_body(), "status": first.status}, [live],
                               now=T0 + timedelta(hours=1, seconds=40))
    assert later.events == []  # once per episode, not every step
    assert later.status == first.status  # nothing changed: the handler writes nothing


def test_reconcile_counts_the_missed_times_folded_into_one_run():
    body = {**schedule_body(), "status": {"lastScheduleTime": "2026-11-02T01:00:00Z"}}
    out = reconcile_schedule(body, [], now=T0 + timedelta(hours=5, minutes=10))
    (run,) = out.create
    assert run["metadata"]["name"] == run_name("hourly", T0 + timedelta(hours=5))
    assert out.missed == 3 and "3 earlier missed time(s) skipped" in out.events[-1][2]


def test_a_promoted_run_whose_mark_was_lost_is_not_judged_again():
    done = run_body("hourly-1", "Succeeded", "2026-11-02T00:50:00Z",
                    iterations=[{"index": 1, "score": 0.6, "model": "/m1"}])
    promoted = {"model": "/m1", "run": "hourly-1", "metric": "score", "value": 0.6, "score": 0.6}
    body = {**schedule_body(promotion={"metric": "score"}), "status": {"promoted": promoted}}
    out = reconcile_schedule(body, [done], now=T0 + timedelta(minutes=55))
    assert out.annotate == {"hourly-1": "promoted"} and out.promotions == [] and out.events == []
    assert out.status["promoted"]["run"] == "hourly-1"


def test_a_run_without_a_trained_model_is_not_promoted():
    done = run_body("hourly-1", "Succeeded", "2026-11-02T00:50:00Z",
                    iterations=[{"index": 0, "model": "m"}, {"index": 1, "winRate": 0.9}])
    out = reconcile_schedule(schedule_body(), [done], now=T0 + timedelta(minutes=55))
    assert out.annotate == {"hourly-1": "refused"} and out.status["promoted"] is None
    assert "reports no trained model" in out.status["lastPromotionDecision"]


def test_schedule_metrics():
    from synpo_operator.metrics import Metrics

    m = Metrics()
    done = run_body("hourly-1", "Succeeded", "2026-11-02T00:50:00Z",
                    iterations=[{"index": 1, "winRate": 0.7, "model": "/m1"}])
    out = reconcile_schedule({**schedule_body(), "status": {"lastScheduleTime": "2026-11-01T21:00:00Z"}}, [done],
                             now=T0 + timedelta(hours=1, seconds=1))
    m.observe_schedule("ns", "hourly", out, created=1)
    text = m.render().decode()
    assert 'synpo_schedule_runs_created_total{namespace="ns",schedule="hourly"} 1.0' in text
    assert 'synpo_promotions_total{decision="promoted",namespace="ns",schedule="hourly"} 1.0' in text
    assert 'synpo_promoted_score{namespace="ns",schedule="hourly"} 0.7' in text
    assert 'synpo_schedule_missed_total{namespace="ns",schedule="hourly"} 3.0' in text
    m.forget_schedule("ns", "hourly")
    assert 'schedule="hourly"' not in m.render().decode()


def test_the_weekly_example_plans_and_matches_the_schema(capsys):
    import jsonschema
    import yaml

    from synpo_operator.api.crd import openapi_schema
    from synpo_operator.api.schedule import SynPOSchedule
    from synpo_operator.cli import main

    from .conftest import ROOT
    from .test_api import _without_k8s_extensions

    path = ROOT / "examples" / "schedule-weekly.yaml"
    assert main(["plan", str(path)]) == 0
    assert "SynPOSchedule alignment/llama3-weekly: schedule '0 2 * * 0' (Europe/Berlin)" in capsys.readouterr().out
    schema = _without_k8s_extensions(openapi_schema(SynPOSchedule))
    jsonschema.Draft4Validator(schema).validate(yaml.safe_load(path.read_text()))
