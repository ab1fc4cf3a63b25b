"""The stages on a tiny model: a 2-iteration run end to end, then faults (resume, bad data, partial stages)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from wl_helpers import run_graph, run_in_process, run_subprocess, stage_configs, tiny_spec

from synpo_workloads import report, store
from synpo_workloads.runtime import RESULT_PREFIX, main_entry, run_stage

pytestmark = pytest.mark.workloads

RUN = "default/test"


@pytest.fixture(scope="session")
def e2e(tiny_model, tmp_path_factory):
    """A 2-iteration run with 2 generation shards, every stage in graph order (in-process)."""
    root = tmp_path_factory.mktemp("runs")
    spec = tiny_spec(tiny_model, str(root), generation={"shards": 2})
    timings: dict = {}
    stages = run_graph(spec, str(root), timings=timings)
    return {"root": root, "run": root / RUN, "spec": spec, "stages": stages, "timings": timings}


def _configs(e2e) -> dict:
    return {node.key: (node, config) for node, config in stage_configs(e2e["spec"], str(e2e["root"]))}


def test_every_stage_done_with_valid_manifests(e2e):
    for key, (node, config, results) in e2e["stages"].items():
        assert store.stage_done(config["output"], node.shards), key
        for part in store.part_dirs(config["output"]):
            manifest = store.load_manifest(part)
            assert manifest["config"]["stage"] == node.id.name
            for rel, info in manifest["files"].items():
                assert store.file_digest(os.path.join(part, rel)) == (info["sha256"], info["bytes"])
        assert all("seconds" in r for r in results)
    run = e2e["run"]
    assert (run / "iter-1" / "base-responses" / "shard-00001-of-00002" / "manifest.json").exists()
    assert (run / "iter-2" / "train" / "model" / "config.json").exists()
    assert (run / "iter-2" / "train" / "model" / "tokenizer.json").exists()
    assert not (run / "iter-2" / "train" / "checkpoints").exists()  # dropped once the model is saved


def test_artifact_contents_and_accumulation(e2e):
    run = e2e["run"]
    paragraphs = list(store.read_rows(str(run / "iter-0" / "keywords"), "paragraphs"))
    assert paragraphs and all(len(r["candidates"]) >= 3 for r in paragraphs)
    prompts = list(store.read_rows(str(run / "iter-1" / "prompts"), "prompts"))
    prompts2 = list(store.read_rows(str(run / "iter-2" / "prompts"), "prompts"))
    assert all(len(r["keywords"]) == 3 for r in prompts + prompts2)
    assert max(r["id"] for r in prompts) < 12 <= min(r["id"] for r in prompts2)  # iteration 2: positions 12..23
    responses = list(store.read_rows(str(run / "iter-1" / "base-responses"), "responses"))
    assert sorted(r["index"] for r in responses) == [p["index"] for p in prompts]
    d1 = list(store.read_rows(str(run / "iter-1" / "pairs"), "dataset"))
    d2 = list(store.read_rows(str(run / "iter-2" / "pairs"), "dataset"))
    added2 = list(store.read_rows(str(run / "iter-2" / "pairs"), "pairs"))
    assert 0 < len(d1) <= 4 and d2 == d1 + added2 and len(d2) > len(d1)
    assert len({p["id"] for p in d2}) == len(d2)  # no pair counted twice
    result = store.stage_result(str(run / "iter-2" / "pairs"))
    assert result["pairsTotal"] == len(d2) and result["pairsAdded"] == len(added2)
    train = store.stage_result(str(run / "iter-2" / "train"))
    assert train["rows"] == len(d2) and train["model"].endswith("iter-2/train/model")
    assert 0 <= train["rewardAccuracy"] <= 1 and isinstance(train["rewardMargin"], float)
    metrics = json.loads((run / "iter-2" / "evaluate" / "metrics.json").read_text())
    assert metrics["headline"] == "M0" and metrics["prompts"] == 6
    assert set(metrics["judges"][0]["comparisons"]) == {"references", "M0"}  # each opponent on its own
    m2 = store.stage_result(str(run / "iter-2" / "evaluate"))
    assert m2["against"] == "M0" and m2["winRate"] == m2["vsM0WinRate"] and m2["vsReferencesN"] == 6
    m0 = store.stage_result(str(run / "iter-0" / "evaluate"))
    assert m0["against"] == "references" and 0 <= m0["winRate"] <= 1 and "vsM0N" not in m0


def test_report(e2e, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(e2e["run"], run, ignore=shutil.ignore_patterns("model"))
    path = report.write_report(str(run))
    text = Path(path).read_text()
    assert "| 0 |" in text and "| 2 |" in text and (run / "report.png").stat().st_size > 1000
    assert "| 2 | M0 | 6 |" in text and "| 2 | references | 6 |" in text and "| 0 | M0 |" not in text
    assert "rewardAccuracy" in text
    # the paired tests read every evaluate stage's per-prompt verdicts: 6 prompts in each comparison
    assert "| 2 | M2 vs M0 head to head (its win rate against M0) | 6 |" in text
    assert "| 2 | M2 vs M1, each against the references | 6 |" in text


def test_done_stage_is_not_redone_and_cli_reemits_result(e2e, tmp_path):
    node, config = _configs(e2e)["i1-pairs"]
    manifest = Path(config["output"]) / "manifest.json"
    before = manifest.stat().st_mtime_ns
    log = tmp_path / "termination-log"
    proc = run_subprocess("pairs", config, tmp_path, env={"SYNPO_TERMINATION_LOG": str(log)})
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(RESULT_PREFIX)
    assert json.loads(last[len(RESULT_PREFIX):]) == store.stage_result(config["output"])
    assert json.loads(log.read_text()) == store.stage_result(config["output"])
    assert manifest.stat().st_mtime_ns == before


def test_half_written_stage_is_redone(e2e, tmp_path):
    configs = _configs(e2e)
    root = tmp_path / "runs"
    shutil.copytree(e2e["root"], root, ignore=shutil.ignore_patterns("iter-2"))
    _, config = configs["i1-pairs"]
    config = json.loads(json.dumps(config).replace(str(e2e["root"]), str(root)))
    out = Path(config["output"])
    good = (out / "dataset.jsonl").read_bytes()
    (out / "dataset.jsonl").write_text('{"truncated": ')  # corrupted file: checksum mismatch
    assert not store.stage_done(str(out))
    run_stage("pairs", config)
    assert store.stage_done(str(out)) and (out / "dataset.jsonl").read_bytes() == good
    (out / "manifest.json").unlink()  # killed before the manifest: redone
    (out / "stray.tmp-123").write_text("junk")
    run_stage("pairs", config)
    assert store.stage_done(str(out)) and not (out / "stray.tmp-123").exists()


def test_sharded_stage_via_job_completion_index(e2e, tmp_path):
    node, config = _configs(e2e)["i1-refine"]
    config = dict(config, output=str(tmp_path / "refine"))
    env = {"JOB_COMPLETION_INDEX": "1", "SYNPO_TERMINATION_LOG": str(tmp_path / "log")}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    import subprocess
    import sys

    from wl_helpers import REPO
    proc = subprocess.run([sys.executable, "-m", "synpo_workloads", "refine", "--config", str(path)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env, "PYTHONPATH": f"{REPO / 'workloads'}:{REPO / 'operator'}"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert store.verify(str(tmp_path / "refine" / "shard-00001-of-00002"))
    assert not store.stage_done(str(tmp_path / "refine"), 2)  # shard 0 not run
    rows = list(store.iter_jsonl(str(tmp_path / "refine" / "shard-00001-of-00002" / "refined.jsonl")))
    assert rows and all(r["index"] % 2 == 1 for r in rows)


def test_train_resumes_after_kill(e2e, tmp_path):
    node, config = _configs(e2e)["i2-train"]
    config = dict(config, output=str(tmp_path / "train"))
    config["spec"] = {**config["spec"], "training": {**config["spec"]["training"], "batchSize": 2}}
    env = {"SYNPO_SAVE_STEPS": "1", "SYNPO_FAULT_AFTER_STEP": "1"}
    killed = run_subprocess("train", config, tmp_path, env=env)
    assert killed.returncode == 137, killed.stderr[-2000:]
    assert (tmp_path / "train" / "checkpoints" / "checkpoint-1").is_dir()
    assert not store.stage_done(config["output"])
    result = run_in_process(node, config)[0]
    assert result["resumedFrom"] == "checkpoint-1"
    assert result["steps"] == -(-result["rows"] // 2) > 1
    assert store.stage_done(config["output"])


def test_dpo_training(e2e, tmp_path):
    node, config = _configs(e2e)["i1-train"]
    config = dict(config, output=str(tmp_path / "dpo"))
    config["spec"] = {**config["spec"], "training": {**config["spec"]["training"], "loss": "dpo", "beta": 0.1}}
    result = run_in_process(node, config)[0]
    assert result["lossType"] == "dpo" and (tmp_path / "dpo" / "model" / "model.safetensors").exists()
    assert 0 <= result["rewardAccuracy"] <= 1 and "rewardMargin" in result


BAD_FILES = {
    "empty": (b"", "empty (no JSONL rows)"),
    "malformed": (b'{"prompt": "a", "response": "b"}\n{"prompt": "a",\n', ":2:"),
    "missing-column": (b'{"question": "a", "response": "b"}\n', "missing column 'prompt'"),
    "not-utf8": (b'{"prompt": "caf\xe9", "response": "b"}\n', "not valid UTF-8"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_seed_file_exits_2_and_keeps_artifacts(e2e, tmp_path, kind, capsys):
    content, message = BAD_FILES[kind]
    bad = tmp_path / f"{kind}.jsonl"
    bad.write_bytes(content)
    node, config = _configs(e2e)["i2-improver"]
    config = dict(config, output=str(tmp_path / "improver"), data={"seed": str(bad)})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    before = {p: p.stat().st_mtime_ns for p in e2e["run"].rglob("manifest.json")}
    if kind == "empty":  # once through the real CLI, the rest in-process (same code path, faster)
        proc = run_subprocess("improver", config, tmp_path)
        code, err = proc.returncode, proc.stderr
    else:
        code = main_entry("improver", str(path), 0)
        err = capsys.readouterr().err
    assert code == 2
    assert message in err and str(bad) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in e2e["run"].rglob("manifest.json")} == before
    assert not store.stage_done(str(tmp_path / "improver"))


def test_missing_engine_is_a_config_error(e2e, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    node, config = _configs(e2e)["i1-base-responses"]
    config = dict(config, output=str(tmp_path / "r"))
    config["spec"] = {**config["spec"], "generation": {**config["spec"]["generation"], "engine": "vllm"}}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    assert main_entry("base-responses", str(path), 0) == 2
    err = capsys.readouterr().err
    assert "spec.generation.engine" in err and "transformers" in err
