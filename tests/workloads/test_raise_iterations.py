"""Raising `iterations` 1 → 2 on a finished run, at the stage level: the planner starts iteration 2's prompts
stage, whose config (built from the raised spec) reads the artifacts iteration 1 used, and the stage, run on the
tiny model, writes prompts from keyword lists iteration 1 never had, while nothing already written changes."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.workloads


def _manifests(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("manifest.json"))}


def test_raised_iterations_run_the_next_prompts_stage(tiny_model, tmp_path):
    from wl_helpers import run_in_process, stage_configs, tiny_spec

    from synpo_operator.api.run import SynPORunSpec
    from synpo_operator.plan import StagePhase, StageState, plan
    from synpo_workloads import store

    storage = str(tmp_path / "runs")
    spec = tiny_spec(tiny_model, storage, iterations=1)
    m = spec["promptsPerIteration"]
    before = {n.key: (n, c) for n, c in stage_configs(spec, storage)}
    for key in ("i0-keywords", "i0-prompt-generator", "i1-prompts"):  # what iteration 2's prompts stage reads
        node, config = before[key]
        run_in_process(node, config)
    run_dir = tmp_path / "runs" / "default" / "test"
    written = _manifests(run_dir)
    assert "iter-1/prompts/manifest.json" in written

    raised = {**spec, "iterations": 2}
    finished = {key: StageState(StagePhase.SUCCEEDED) for key in before}  # every stage of iteration ≤ 1 done
    decision = plan(SynPORunSpec.model_validate(raised), finished)
    assert decision.phase == "Running"
    assert {s.stage.key for s in decision.start} == {"i2-prompts", "i2-improver"}
    after = {n.key: (n, c) for n, c in stage_configs(raised, storage)}
    assert {k for k in after if k.startswith(("i0-", "i1-"))} == set(before)  # the same stages, nothing renamed
    node, config = after["i2-prompts"]
    old = before["i1-prompts"][1]
    assert config["inputs"] == old["inputs"] and config["models"] == old["models"]  # iteration 1's keywords/G
    assert config["output"] != old["output"]

    result = run_in_process(node, config)[0]
    assert result["rows"] > 0
    ids1 = [r["id"] for r in store.read_rows(old["output"], "prompts")]
    ids2 = [r["id"] for r in store.read_rows(config["output"], "prompts")]
    assert ids1 and all(0 <= i < m for i in ids1)
    assert ids2 and all(m <= i < 2 * m for i in ids2)  # iteration 2's own keyword lists, positions m..2m-1
    assert _manifests(run_dir) == {**written, "iter-2/prompts/manifest.json":
                                   (run_dir / "iter-2" / "prompts" / "manifest.json").read_bytes()}
    # with it done, the run goes on to iteration 2's M0 answers to those prompts
    following = plan(SynPORunSpec.model_validate(raised), {**finished, "i2-prompts": StageState(StagePhase.SUCCEEDED)})
    assert "i2-base-responses" in {s.stage.key for s in following.start}
