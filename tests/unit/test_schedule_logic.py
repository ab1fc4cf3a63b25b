"""Schedule decisions: CronJob's missed-time rules, concurrency policies, history limits, promotion gate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from synpo_operator.api.schedule import SynPOScheduleSpec
from synpo_operator.schedule import (
    PROMOTION_ANNOTATION,
    SCHEDULE_LABEL,
    FinishedRun,
    decide,
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


def evaluated(win_rate: float, n: int, *, model: str = "/m1", against_references: tuple | None = None,
              baseline: bool = True) -> list[dict]:
    """status.iterations of a run whose M_1 won `win_rate` of `n` comparisons with M0, as the operator writes
    them from the evaluate stage's result (the stage's Wilson interval, the result contract, the status model)."""
    from synpo_operator.api.evaluation import evaluation_fields, flatten
    from synpo_operator.api.run import IterationSummary
    from synpo_workloads.winrate import wilson_interval

    def fig(p: float, k: int) -> dict:
        low, high = wilson_interval(p, k)
        return {"n": k, "winRate": p, "winRateLow": low, "winRateHigh": high}

    comparisons = {"references": fig(*against_references)} if against_references else {}
    if baseline:
        comparisons["M0"] = fig(win_rate, n)
    result = {"winRate": win_rate, **flatten(comparisons, "M0" if baseline else "references")}
    summary = IterationSummary(index=1, win_rate=result["winRate"], model=model, **evaluation_fields(result))
    return [{"index": 0, "model": "m"}, summary.to_api()]


def gate(s: SynPOScheduleSpec, iterations: list[dict], promoted: dict | None = None, base: str = "m"):
    """The gate's verdict on a finished run of schedule spec `s` (through the pure reconcile step)."""
    run = run_body("hourly-1", "Succeeded", "2026-11-02T00:50:00Z", iterations=iterations)
    run["spec"] = {"model": {"base": base}}
    body = {**schedule_body(), "spec": s.to_api(), **({"status": {"promoted": promoted}} if promoted else {})}
    out = reconcile_schedule(body, [run], now=T0 + timedelta(minutes=55))
    return out.annotate["hourly-1"] == "promoted", out


def test_a_win_rate_of_0_56_on_20_prompts_is_not_promoted():
    promote, out = gate(spec(), evaluated(0.56, 20))
    assert not promote and out.status["promoted"] is None
    text, evidence = out.status["lastPromotionDecision"], out.status["lastPromotion"]
    assert text.startswith("not promoted hourly-1: winRate vs M0 0.5600, 95% interval [0.3") and "n = 20" in text
    assert "lower end of the 95% interval of winRate vs M0 > 0.5 + minImprovement = 0.500" in text
    assert evidence["n"] == 20 and evidence["low"] < 0.5 < evidence["high"] and evidence["threshold"] == 0.5
    assert evidence["against"] == "m" and not evidence["promoted"]
    assert out.events[0][:2] == ("Warning", "PromotionRefused") and "n = 20" in out.events[0][2]


def test_a_win_rate_of_0_75_on_200_prompts_is_promoted():
    promote, out = gate(spec(), evaluated(0.75, 200))
    assert promote and out.status["promoted"]["model"] == "/m1" and out.status["promoted"]["value"] == 0.75
    evidence = out.status["lastPromotion"]
    assert evidence["promoted"] and evidence["n"] == 200 and evidence["low"] > 0.68
    assert out.status["lastPromotionDecision"].startswith("promoted hourly-1: winRate vs M0 0.7500, 95% interval")
    assert out.events[0][:2] == ("Normal", "ModelPromoted")


def test_min_improvement_raises_the_bar_for_the_lower_end():
    assert gate(spec(promotion={"minImprovement": 0.15}), evaluated(0.75, 200))[0]  # lower end 0.686 > 0.65
    promote, out = gate(spec(promotion={"minImprovement": 0.2}), evaluated(0.75, 200))
    assert not promote and "does not exceed 0.700" in out.status["lastPromotionDecision"]


def test_only_the_comparison_with_m0_counts():
    # a large win over the references says nothing about the model the candidate would replace
    promote, out = gate(spec(), evaluated(0, 0, against_references=(0.95, 400), baseline=False))
    assert not promote and "no comparison with M0" in out.status["lastPromotionDecision"]
    promote, _ = gate(spec(), evaluated(0.56, 20, against_references=(0.95, 400)))
    assert not promote


def test_a_run_that_started_before_the_last_promotion_is_not_judged_against_the_wrong_model():
    promoted = {"model": "/m0-promoted", "run": "hourly-0", "metric": "winRate", "value": 0.8}
    promote, out = gate(spec(), evaluated(0.9, 500), promoted=promoted, base="m")
    assert not promote and "not the promoted model /m0-promoted" in out.status["lastPromotionDecision"]
    assert gate(spec(), evaluated(0.9, 500), promoted=promoted, base="/m0-promoted")[0]


def test_lc_win_rate_gate_uses_the_lc_interval_and_says_why_lc_is_missing():
    iterations = evaluated(0.75, 200)
    m0 = next(c for c in iterations[1]["comparisons"] if c["against"] == "M0")
    m0.update(lcWinRate=0.7, lcWinRateLow=0.52, lcWinRateHigh=0.8)
    assert gate(spec(promotion={"metric": "lcWinRate"}), iterations)[0]
    m0.update(lcWinRateLow=0.45)
    assert not gate(spec(promotion={"metric": "lcWinRate"}), iterations)[0]
    for key in ("lcWinRate", "lcWinRateLow", "lcWinRateHigh"):
        del m0[key]
    m0["lcWinRateReason"] = "all weights are zero"
    promote, out = gate(spec(promotion={"metric": "lcWinRate"}), iterations)
    assert not promote and "no lcWinRate vs M0 (all weights are zero)" in out.status["lastPromotionDecision"]


def test_a_figure_without_an_interval_is_not_promoted():
    iterations = [{"index": 1, "winRate": 0.9, "against": "M0", "n": 500, "model": "/m1"}]
    promote, out = gate(spec(), iterations)
    assert not promote and "has no 95% interval" in out.status["lastPromotionDecision"]


def test_a_gate_without_its_opponent_is_refused_at_apply_time():
    from pydantic import ValidationError

    body = {"schedule": "0 * * * *", "runTemplate": {"spec": {
        "model": {"base": "m"}, "data": {"seed": "s", "corpus": "c", "eval": "e"}, "storage": {"uri": "/r"},
        "evaluation": {"baseline": False}}}}
    with pytest.raises(ValidationError, match="spec.runTemplate.spec.evaluation.baseline must be true"):
        SynPOScheduleSpec.model_validate(body)
    assert SynPOScheduleSpec.model_validate({**body, "promotion": {"enabled": False}})
    with pytest.raises(ValidationError, match="promotion.metric"):
        spec(promotion={"metric": "score"})  # a mean score has no interval and no opponent


def test_the_crd_carries_the_same_rule():
    from synpo_operator.api.crd import crds
    from synpo_operator.api.schedule import GATE_NEEDS_BASELINE

    crd = next(c for c in crds() if c["spec"]["names"]["kind"] == "SynPOSchedule")
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    (rule,) = [r for r in spec_schema["x-kubernetes-validations"] if r["message"] == GATE_NEEDS_BASELINE]
    assert "self.runTemplate.spec.evaluation.baseline" in rule["rule"] and "self.promotion.enabled" in rule["rule"]
    assert spec_schema["properties"]["promotion"]["properties"]["metric"]["enum"] == ["winRate", "lcWinRate"]


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
                    iterations=evaluated(0.7, 300, model="/ws/ns/hourly-1/iter-1/train/model"))
    out = reconcile_schedule(schedule_body(), [done], now=T0 + timedelta(hours=1, seconds=1))
    assert out.annotate == {"hourly-1": "promoted"} and out.promotions == [("hourly-1", True)]
    assert out.status["promoted"]["model"] == "/ws/ns/hourly-1/iter-1/train/model"
    assert out.create[0]["spec"]["model"]["base"] == "/ws/ns/hourly-1/iter-1/train/model"
    assert "promoted hourly-1: winRate vs M0 0.7000" in out.status["lastPromotionDecision"]
    assert ("Normal", "ModelPromoted") == out.events[0][:2]
    # Judged once: the annotation stops a second verdict.
    done["metadata"]["annotations"][PROMOTION_ANNOTATION] = "promoted"
    again = reconcile_schedule({**schedule_body(), "status": out.status}, [done],
                               now=T0 + timedelta(hours=1, seconds=30))
    assert again.promotions == [] and again.create == []


def test_reconcile_refuses_a_worse_model_and_keeps_the_old_base():
    worse = run_body("hourly-2", "Succeeded", "2026-11-02T00:50:00Z",
                     iterations=evaluated(0.4, 300, model="/m2"))
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
                    iterations=evaluated(0.7, 300))
    promoted = {"model": "/m1", "run": "hourly-1", "metric": "winRate", "value": 0.7}
    body = {**schedule_body(), "status": {"promoted": promoted}}
    out = reconcile_schedule(body, [done], now=T0 + timedelta(minutes=55))
    assert out.annotate == {"hourly-1": "promoted"} and out.promotions == [] and out.events == []
    assert out.status["promoted"]["run"] == "hourly-1"


def test_a_run_without_a_trained_model_is_not_promoted():
    done = run_body("hourly-1", "Succeeded", "2026-11-02T00:50:00Z",
                    iterations=[{**i, "model": None} for i in evaluated(0.9, 300)])
    out = reconcile_schedule(schedule_body(), [done], now=T0 + timedelta(minutes=55))
    assert out.annotate == {"hourly-1": "refused"} and out.status["promoted"] is None
    assert "reports no trained model" in out.status["lastPromotionDecision"]


def test_schedule_metrics():
    from synpo_operator.metrics import Metrics

    m = Metrics()
    done = run_body("hourly-1", "Succeeded", "2026-11-02T00:50:00Z",
                    iterations=evaluated(0.7, 300))
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
