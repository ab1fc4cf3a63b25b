"""The planner: every transition, and properties over random schedules of stage outcomes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synpo_operator.api.run import SynPORunSpec
from synpo_operator.plan import StageId, StagePhase, StageState, plan, stage_graph
from synpo_operator.plan.graph import BASE_RESPONSES, EVALUATE, PAIRS, REFINE, RESPONSES, TRAIN

OK = StageState(StagePhase.SUCCEEDED)
RUNNING = StageState(StagePhase.RUNNING)
PASSED = {"i0-preflight": OK}
"""The pre-flight passed: the SynPO stages may start."""


def spec(**overrides) -> SynPORunSpec:
    base = {
        "model": {"base": "org/m0"},
        "data": {"seed": "s.jsonl", "corpus": "c.jsonl", "eval": "e.jsonl"},
        "storage": {"uri": "/tmp/runs"},
        "iterations": 2,
        "promptsPerIteration": 100,
        "pairsPerIteration": 10,
    }
    base.update(overrides)
    return SynPORunSpec.model_validate(base)


def keys(decision) -> set[str]:
    return {s.stage.key for s in decision.start}


def test_first_decision_starts_the_preflight_alone():
    d = plan(spec(), {})
    assert d.phase == "Running" and keys(d) == {"i0-preflight"}
    assert d.iteration == 0 and d.stage == "preflight"


def test_a_passed_preflight_starts_every_stage_without_inputs():
    d = plan(spec(), PASSED)
    assert d.phase == "Running"
    assert keys(d) == {"i0-keywords", "i0-evaluate", "i1-improver"}
    assert all(s.attempt == 1 for s in d.start)


def test_every_stage_waits_for_the_preflight():
    graph = {n.id: n for n in stage_graph(spec(iterations=3))}
    pre = StageId(0, "preflight")

    def waits(sid: StageId) -> bool:
        return sid == pre or any(waits(need) for need in graph[sid].needs)

    assert graph[pre].needs == () and not graph[pre].gpu
    assert all(waits(sid) for sid in graph)


def test_nothing_starts_while_the_preflight_has_not_passed():
    # finished stages of an earlier spec, the pre-flight forgotten (the spec changed): it alone starts
    d = plan(spec(), {"i0-keywords": OK, "i0-evaluate": OK, "i1-improver": OK})
    assert keys(d) == {"i0-preflight"}
    d = plan(spec(), {"i0-keywords": OK, "i0-preflight": RUNNING})
    assert d.start == ()


def test_a_failed_preflight_fails_the_run_at_once_naming_the_field():
    failed = StageState(StagePhase.FAILED, attempts=1, retryable=False,
                        message="spec.evaluation.judges[0].endpoint: http://127.0.0.1:9/v1 does not answer")
    d = plan(spec(), {"i0-preflight": failed}, max_attempts=3)
    assert d.phase == "Failed" and d.reason == "PreflightFailed" and d.start == ()
    assert "spec.evaluation.judges[0].endpoint" in d.message and "does not answer" in d.message


def test_the_preflight_output_is_keyed_by_the_spec_but_not_by_run_control_fields():
    def out(s):
        return next(n for n in stage_graph(s) if n.id.name == "preflight").output

    assert out(spec()) == out(spec(suspend=True, backoffLimit=5, activeDeadlineSeconds=600))
    assert out(spec()) != out(spec(data={"seed": "other.jsonl", "corpus": "c.jsonl", "eval": "e.jsonl"}))
    assert out(spec()).startswith("iter-0/preflight/")


def test_stage_names_are_deterministic_and_unique():
    graph = stage_graph(spec(iterations=4))
    names = [n.key for n in graph]
    assert len(names) == len(set(names))
    assert names == [n.key for n in stage_graph(spec(iterations=4))]
    assert all(StageId.parse(k).key == k for k in names)


def test_prompt_generator_runs_once_per_run():
    graph = stage_graph(spec(iterations=4))
    assert [n.key for n in graph if n.id.name == "prompt-generator"] == ["i0-prompt-generator"]
    for n in graph:
        if n.id.name == "prompts":
            assert StageId(0, "prompt-generator") in n.needs


def test_iteration_one_reuses_m0_responses_and_later_iterations_use_the_policy():
    graph = {n.key: n for n in stage_graph(spec(iterations=3))}
    assert "i1-responses" not in graph
    assert graph["i1-refine"].inputs["responses"] == "iter-1/base-responses"
    assert graph["i2-refine"].inputs["responses"] == "iter-2/responses"
    assert graph["i2-responses"].models["policy"] == "iter-1/train/model"
    assert graph["i3-improver"].models["policy"] == "iter-2/train/model"
    # Rejected responses always come from M0, and training always starts from M0.
    for t in (1, 2, 3):
        assert graph[f"i{t}-base-responses"].models["policy"] == "org/m0"
        assert graph[f"i{t}-train"].models["base"] == "org/m0"
        assert graph[f"i{t}-pairs"].inputs["rejected"] == f"iter-{t}/base-responses"


def test_pairs_accumulate_across_iterations():
    graph = {n.key: n for n in stage_graph(spec(iterations=3))}
    assert "previous" not in graph["i1-pairs"].inputs
    assert graph["i2-pairs"].inputs["previous"] == "iter-1/pairs"
    assert StageId(2, PAIRS) in graph["i3-pairs"].needs


def test_evaluation_every_n_always_includes_the_last_iteration_and_baseline():
    graph = {n.key for n in stage_graph(spec(iterations=5, evaluation={"every": 2}))}
    assert {k for k in graph if k.endswith(EVALUATE)} == {"i0-evaluate", "i2-evaluate", "i4-evaluate",
                                                           "i5-evaluate"}
    graph = {n.key for n in stage_graph(spec(iterations=2, evaluation={"every": 5, "baseline": False}))}
    assert {k for k in graph if k.endswith(EVALUATE)} == {"i2-evaluate"}


def test_sharded_stages_carry_the_shard_count():
    graph = stage_graph(spec(generation={"shards": 4}))
    for n in graph:
        assert n.shards == (4 if n.id.name in (BASE_RESPONSES, RESPONSES, REFINE) else 1)


def test_running_stage_is_not_started_again_and_its_dependents_wait():
    d = plan(spec(), {**PASSED, "i0-keywords": RUNNING, "i0-evaluate": RUNNING, "i1-improver": RUNNING})
    assert d.phase == "Running" and d.start == ()
    assert d.iteration == 0 and d.stage == "evaluate,keywords"


def test_done_inputs_unlock_the_next_stage():
    d = plan(spec(), {**PASSED, "i0-keywords": OK, "i0-evaluate": OK, "i1-improver": RUNNING})
    assert keys(d) == {"i0-prompt-generator"}


def test_failed_stage_fails_the_run_when_attempts_are_exhausted():
    failed = StageState(StagePhase.FAILED, attempts=1, message="exit code 3")
    d = plan(spec(), {"i0-keywords": failed})
    assert d.phase == "Failed" and d.reason == "StageFailed"
    assert "i0-keywords" in d.message and "exit code 3" in d.message


def test_failed_stage_is_retried_while_attempts_remain():
    failed = StageState(StagePhase.FAILED, attempts=1)
    d = plan(spec(), {**PASSED, "i0-keywords": failed}, max_attempts=3)
    assert d.phase == "Running"
    assert [(s.stage.key, s.attempt) for s in d.start if s.stage.key == "i0-keywords"] == [("i0-keywords", 2)]


def test_all_done_succeeds():
    graph = stage_graph(spec())
    d = plan(spec(), {n.key: OK for n in graph})
    assert d.phase == "Succeeded" and d.finished and d.start == ()


def test_raising_iterations_after_success_continues_the_run():
    graph = stage_graph(spec(iterations=2))
    d = plan(spec(iterations=3), {n.key: OK for n in graph})
    assert d.phase == "Running" and keys(d) == {"i3-prompts", "i3-improver"}


def test_suspend_starts_nothing():
    d = plan(spec(suspend=True), {"i0-keywords": OK})
    assert d.phase == "Suspended" and d.start == ()


def test_deadline_exceeded_fails():
    d = plan(spec(activeDeadlineSeconds=600), {"i0-keywords": RUNNING}, elapsed_seconds=601)
    assert d.phase == "Failed" and d.reason == "DeadlineExceeded"
    assert plan(spec(activeDeadlineSeconds=600), {}, elapsed_seconds=599).phase == "Running"


def test_max_parallel_caps_running_stages():
    d = plan(spec(), {"i0-keywords": RUNNING}, max_parallel=2)
    assert len(d.start) == 1
    assert plan(spec(), {"i0-keywords": RUNNING, "i0-evaluate": RUNNING}, max_parallel=2).start == ()


def test_unknown_observed_stages_are_ignored():
    d = plan(spec(), {**PASSED, "i9-train": OK})
    assert keys(d) == {"i0-keywords", "i0-evaluate", "i1-improver"}


# --- properties ---------------------------------------------------------------------------------------

specs = st.builds(
    lambda iterations, every, baseline, shards: spec(
        iterations=iterations, evaluation={"every": every, "baseline": baseline}, generation={"shards": shards}),
    st.integers(1, 5), st.integers(1, 4), st.booleans(), st.integers(1, 4))


@settings(max_examples=150, deadline=None)
@given(specs, st.randoms(use_true_random=False), st.integers(1, 3), st.sampled_from([None, 1, 2, 5]))
def test_simulated_runs_respect_dependencies_and_always_end(s, rnd, max_attempts, max_parallel):
    graph = {n.key: n for n in stage_graph(s)}
    observed: dict[str, StageState] = {}
    started: dict[str, int] = {}
    for _ in range(10 * len(graph) * max_attempts + 10):
        d = plan(s, observed, max_attempts=max_attempts, max_parallel=max_parallel)
        if d.finished:
            break
        for start in d.start:
            node = start.stage
            # Never before its inputs are done; never twice while running or after success.
            assert all(observed.get(n.key) and observed[n.key].phase is StagePhase.SUCCEEDED for n in node.needs)
            prior = observed.get(node.key)
            assert prior is None or prior.phase is StagePhase.FAILED
            assert start.attempt == started.get(node.key, 0) + 1 <= max_attempts
            started[node.key] = start.attempt
            observed[node.key] = StageState(StagePhase.RUNNING, start.attempt)
        running = [k for k, v in observed.items() if v.phase is StagePhase.RUNNING]
        assert running, "a running run always has a stage in flight"
        key = rnd.choice(running)
        outcome = StagePhase.FAILED if rnd.random() < 0.15 else StagePhase.SUCCEEDED
        observed[key] = StageState(outcome, observed[key].attempts)
    else:
        pytest.fail("the run never ended")
    if d.phase == "Succeeded":
        assert set(observed) == set(graph)
        assert all(v.phase is StagePhase.SUCCEEDED for v in observed.values())
    else:
        failed_preflight = observed.get("i0-preflight", OK).phase is StagePhase.FAILED
        assert d.phase == "Failed" and d.reason == ("PreflightFailed" if failed_preflight else "StageFailed")
        assert any(v.phase is StagePhase.FAILED and v.attempts >= max_attempts for v in observed.values())


@settings(max_examples=60, deadline=None)
@given(specs)
def test_graph_is_in_execution_order_and_trains_from_m0(s):
    seen: set[StageId] = set()
    for node in stage_graph(s):
        assert set(node.needs) <= seen, f"{node.key} listed before what it needs"
        seen.add(node.id)
        if node.id.name == TRAIN:
            assert node.models == {"base": s.model.base}


def test_a_non_retryable_failure_fails_at_once():
    bad_input = StageState(StagePhase.FAILED, attempts=1, message="exit code 2: eval.jsonl line 2", retryable=False)
    d = plan(spec(), {"i0-keywords": bad_input}, max_attempts=3)
    assert d.phase == "Failed" and "eval.jsonl line 2" in d.message
