"""A cluster run's report where its users are: each evaluate stage writes the run's report (report.md and
report.png, as `synpo report` does) next to the run's artifacts as it finishes, and its result names it."""

from __future__ import annotations

from wl_helpers import run_in_process, stage_configs, tiny_spec

from synpo_workloads import report, store


def _win_rates(md: str) -> str:
    """The win-rate table of a report (the per-iteration table's seconds differ by when they were taken)."""
    return md.split("## Per iteration")[0]


def test_each_evaluation_writes_the_run_report_next_to_its_artifacts(tiny_model, tmp_path):
    spec = tiny_spec(tiny_model, str(tmp_path), iterations=1, generation={"maxNewTokens": 8})
    configs = {n.key: (n, c) for n, c in stage_configs(spec, str(tmp_path))}
    run_dir = tmp_path / "default" / "test"

    (first,) = run_in_process(*configs["i0-evaluate"])
    assert first["report"] == "report.md"
    md = (run_dir / "report.md").read_text()
    assert "| 0 | references | 6 |" in md and "| 1 |" not in md  # this evaluation, before its manifest

    node, config = configs["i1-evaluate"]
    config = {**config, "models": {**config["models"], "policy": tiny_model}}  # M_1 stands in: same weights
    (second,) = run_in_process(node, config)
    assert second["report"] == "report.md"
    md = (run_dir / "report.md").read_text()
    assert "| 0 | references | 6 |" in md and "| 1 | M0 | 6 |" in md and "| 1 | references | 6 |" in md
    assert (run_dir / "report.png").stat().st_size > 1000
    # the manifest keeps the key, so a re-run stage (which only re-emits its result) still names the report
    assert store.load_manifest(str(run_dir / "iter-1" / "evaluate"))["result"]["report"] == "report.md"
    # the same report as `synpo report` writes from the manifests afterwards
    after = (run_dir / "report.md").read_text()
    assert _win_rates(after) == _win_rates((run_dir / report.write_report(str(run_dir))).read_text())


def test_a_report_that_cannot_be_written_never_fails_the_evaluation(tiny_model, tmp_path):
    spec = tiny_spec(tiny_model, str(tmp_path), iterations=1, generation={"maxNewTokens": 8})
    node, config = next((n, c) for n, c in stage_configs(spec, str(tmp_path)) if n.key == "i0-evaluate")
    run_dir = tmp_path / "default" / "test"
    (run_dir / "report.png").mkdir(parents=True)  # the plot cannot be saved there
    (result,) = run_in_process(node, config)
    assert "report" not in result and result["reportError"].startswith(("IsADirectoryError", "OSError"))
    assert result["vsReferencesN"] == 6  # the evaluation itself stands, and its manifest is written
    assert store.load_manifest(str(run_dir / "iter-0" / "evaluate"))["result"]["reportError"]
