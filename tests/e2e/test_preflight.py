"""`synpo run` fails in the pre-flight, before any other stage starts, on a dead judge endpoint, a causal-LM
checkpoint as reward model, a missing data file and unwritable storage; a passed pre-flight is not redone on
resume, and is redone when the spec changes; `synpo plan --preflight` runs the same checks."""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path

import pytest

from .conftest import tiny_spec, write_run
from .test_synpo_run import ENV, synpo

pytestmark = pytest.mark.workloads


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def started_stages(state_dir: Path) -> list[str]:
    """Stages `synpo run` started: each gets its stage config written before its process starts."""
    return sorted(p.stem for p in (state_dir / "configs").glob("*.json"))


def fail_in_preflight(run_file: Path, state_dir: Path, *fragments: str) -> tuple[str, float]:
    started = time.monotonic()
    proc = synpo("run", str(run_file), "--no-report")
    out, _ = proc.communicate(timeout=600)
    seconds = time.monotonic() - started
    assert proc.returncode == 1, out
    assert "✗ i0-preflight failed" in out and "Failed: pre-flight check failed" in out, out
    for fragment in fragments:
        assert fragment in out, (fragment, out)
    assert "Traceback" not in out
    assert started_stages(state_dir) == ["i0-preflight"], out  # nothing else started
    assert [line for line in out.splitlines() if line.startswith("→")] == ["→ i0-preflight"]
    return out, seconds


def test_a_dead_judge_endpoint_fails_the_run_in_the_preflight(tiny_model: str, tmp_path: Path):
    endpoint = f"http://127.0.0.1:{_closed_port()}/v1"
    spec = tiny_spec(tiny_model, str(tmp_path / "runs"), iterations=1,
                     evaluation={"judges": [{"type": "openai", "endpoint": endpoint, "model": "judge"}]})
    run_file = write_run(tmp_path / "run.yaml", "deadjudge", spec)
    _, seconds = fail_in_preflight(run_file, tmp_path / "runs" / "default" / "deadjudge",
                                   f"spec.evaluation.judges[0].endpoint: {endpoint} does not answer")
    assert seconds < 120


def test_a_causal_lm_as_reward_model_fails_the_run_in_the_preflight(tiny_model: str, tmp_path: Path):
    spec = tiny_spec(tiny_model, str(tmp_path / "runs"), iterations=1,
                     filter={"scorer": {"type": "rewardModel", "model": tiny_model}, "minMargin": -1.0})
    run_file = write_run(tmp_path / "run.yaml", "nohead", spec)
    fail_in_preflight(run_file, tmp_path / "runs" / "default" / "nohead",
                      f"spec.filter.scorer.model: {tiny_model}: the weights score.weight are not in the checkpoint")


def test_a_missing_data_file_fails_the_run_in_the_preflight(tiny_model: str, tmp_path: Path):
    spec = tiny_spec(tiny_model, str(tmp_path / "runs"), iterations=1)
    spec["data"]["corpus"] = str(tmp_path / "no-such-corpus.jsonl")
    run_file = write_run(tmp_path / "run.yaml", "nodata", spec)
    fail_in_preflight(run_file, tmp_path / "runs" / "default" / "nodata",
                      f"spec.data.corpus: {tmp_path / 'no-such-corpus.jsonl'}: file not found")


def test_unwritable_storage_fails_the_run_in_the_preflight(tiny_model: str, s3, tmp_path: Path, monkeypatch):
    """Wrong credentials and a bucket that does not exist: the store refuses the write (SeaweedFS checks the
    signature; moto checks no credentials but has no such bucket, and SeaweedFS would create one on a signed
    write)."""
    for key, value in {**s3.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}.items():
        monkeypatch.setitem(ENV, key, value)
    name = f"nostore-{uuid.uuid4().hex[:8]}"
    spec = tiny_spec(tiny_model, f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/runs", iterations=1)
    run_file = write_run(tmp_path / "run.yaml", name, spec)
    state = Path.home() / ".cache" / "synpo" / "runs" / "default" / name  # logs of runs on object storage
    fail_in_preflight(run_file, state, "spec.storage.uri: ")


def test_a_passed_preflight_is_not_redone_on_resume_but_is_when_the_spec_changes(tiny_model: str, tmp_path: Path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "a"}\n' * 3)  # parses (the pre-flight passes); no keywords (the stage fails)
    spec = tiny_spec(tiny_model, str(tmp_path / "runs"), iterations=1)
    spec["data"]["corpus"] = str(corpus)
    run_file = write_run(tmp_path / "run.yaml", "resume", spec)
    run_dir = tmp_path / "runs" / "default" / "resume"

    def run() -> str:
        proc = synpo("run", str(run_file), "--no-report")
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 1 and "✗ i0-keywords failed" in out, out
        return out

    first = run()
    assert "✓ i0-preflight succeeded" in first
    manifests = list(run_dir.glob("iter-0/preflight/*/manifest.json"))
    assert len(manifests) == 1
    result = json.loads(manifests[0].read_text())["result"]
    assert result["specKey"] == manifests[0].parent.name and result["checks"] == 5
    assert "→ i0-preflight" not in run()  # resumed: passed already
    write_run(run_file, "resume", {**spec, "suspend": False, "backoffLimit": 0})  # run control only
    assert "→ i0-preflight" not in run()
    write_run(run_file, "resume", {**spec, "evaluation": {**spec["evaluation"], "maxPrompts": 3}})
    assert "→ i0-preflight" in run()  # a changed spec is checked again
    assert len(list(run_dir.glob("iter-0/preflight/*/manifest.json"))) == 2


def test_plan_preflight_runs_the_same_checks_from_here(tiny_model: str, tmp_path: Path):
    spec = tiny_spec(tiny_model, str(tmp_path / "runs"), iterations=1)
    good = write_run(tmp_path / "good.yaml", "plan-good", spec)
    proc = synpo("plan", str(good), "--preflight")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "pre-flight passed: 5 checks" in out, out
    assert not (tmp_path / "runs" / "default" / "plan-good" / "iter-0").exists()  # checks only: no stage output
    endpoint = f"http://127.0.0.1:{_closed_port()}/v1"
    bad = write_run(tmp_path / "bad.yaml", "plan-bad", {**spec, "evaluation": {"judges": [
        {"type": "openai", "endpoint": endpoint, "model": "judge"}]}})
    proc = synpo("plan", str(bad), "--preflight")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out
    assert f"spec.evaluation.judges[0].endpoint: {endpoint} does not answer" in out and "Traceback" not in out
