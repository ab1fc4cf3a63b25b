"""`synpo run` end to end on a tiny random Llama: all stages, report, and resume after an interrupt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import tiny_spec, write_run

pytestmark = pytest.mark.workloads
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _interruptible() -> None:
    # A shell without job control starts background commands with SIGINT ignored, and the ignore is
    # inherited: `synpo run` would never see the Ctrl-C this test sends when the suite itself runs in the
    # background. The child gets the default disposition, as at a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def synpo(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "synpo_operator.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=ENV, preexec_fn=_interruptible, **kw)


def manifests(run_dir: Path) -> dict[str, float]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.glob("iter-*/*/**/manifest.json")}


def test_two_iterations_interrupted_and_resumed(tiny_model: str, tmp_path: Path):
    storage = tmp_path / "runs"
    run_file = write_run(tmp_path / "run.yaml", "tiny", tiny_spec(tiny_model, str(storage)))
    run_dir = storage / "default" / "tiny"

    # Interrupt once the prompt generator is trained: some stages are done, later ones are not.
    first = synpo("run", str(run_file), "--no-report")
    deadline = time.monotonic() + 600
    while not (run_dir / "iter-0" / "prompt-generator" / "manifest.json").exists():
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "the prompt generator never finished"
        time.sleep(0.5)
    first.send_signal(signal.SIGINT)
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 130, out
    assert "run the same command again" in out
    done_before = manifests(run_dir)
    assert "iter-0/keywords/manifest.json" in done_before

    second = synpo("run", str(run_file))
    out, _ = second.communicate(timeout=1800)
    assert second.returncode == 0, out
    assert "Succeeded" in out
    # Finished stages were not redone: their manifests are untouched.
    after = manifests(run_dir)
    assert {k: after[k] for k in done_before} == done_before
    for key in ("iter-1/train", "iter-2/train", "iter-2/pairs", "iter-2/evaluate", "iter-0/evaluate"):
        assert (run_dir / key / "manifest.json").exists(), key
    assert (run_dir / "iter-2" / "train" / "model" / "config.json").exists()
    assert list((run_dir / "logs").glob("i2-train*.log"))
    # The report: one row per iteration, M0 beside M1 and M2, and a plot.
    report = (run_dir / "report.md").read_text()
    assert "| 0 " in report and "| 1 " in report and "| 2 " in report
    assert (run_dir / "report.png").stat().st_size > 1000

    # Running a finished run again redoes nothing.
    third = synpo("run", str(run_file), "--no-report")
    out, _ = third.communicate(timeout=300)
    assert third.returncode == 0 and "→" not in out, out
    assert manifests(run_dir) == after


def test_bad_data_fails_the_stage_clearly_and_keeps_earlier_artifacts(tiny_model: str, tmp_path: Path):
    # past the records the pre-flight reads (its first 20): only the stage that reads the whole file sees it
    bad_eval = tmp_path / "eval.jsonl"
    bad_eval.write_text('{"prompt": "fine"}\n' * 29 + '{"prompt": broken\n')
    spec = tiny_spec(tiny_model, str(tmp_path / "runs"), iterations=1)
    spec["data"]["eval"] = str(bad_eval)
    run_file = write_run(tmp_path / "run.yaml", "bad", spec)
    proc = synpo("run", str(run_file), "--no-report")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 1, out
    assert "i0-evaluate" in out and "eval.jsonl:30:" in out and "malformed JSON" in out
    assert "Traceback" not in out
    assert (tmp_path / "runs" / "default" / "bad" / "iter-0" / "keywords" / "manifest.json").exists()
    summary = json.loads((tmp_path / "runs" / "default" / "bad" / "iter-0" / "keywords" / "manifest.json")
                         .read_text())
    assert summary["files"]


def _stage_pids(config: Path) -> list[int]:
    """Live processes whose command line names the stage config (the stage and anything it started)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next(ln for ln in (proc / "status").read_text().splitlines() if ln.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if str(config) in cmdline and "zombie" not in state:
            pids.append(int(proc.name))
    return pids


def test_sigterm_stops_the_running_stage_and_the_next_run_redoes_it(tiny_model: str, tmp_path: Path):
    """`timeout`, CI runners and systemd stop with SIGTERM: the stage process must go too (not orphaned),
    the exit is Ctrl-C's, and the stage is redone by the next `synpo run`."""
    storage = tmp_path / "runs"
    run_file = write_run(tmp_path / "run.yaml", "term", tiny_spec(tiny_model, str(storage), iterations=1))
    run_dir = storage / "default" / "term"
    config = run_dir / "configs" / "i0-prompt-generator.json"

    def start_and_terminate() -> str:
        proc = synpo("run", str(run_file), "--no-report")
        deadline = time.monotonic() + 600
        while not _stage_pids(config):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the prompt generator never started"
            time.sleep(0.2)
        time.sleep(1.0)  # the stage is under way (imports, model loading)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 130, out
        assert "run the same command again" in out and "Traceback" not in out
        assert not _stage_pids(config), "the stage process outlived synpo run"
        assert not (run_dir / "iter-0" / "prompt-generator" / "manifest.json").exists()
        return out

    first = start_and_terminate()
    assert "→ i0-prompt-generator" in first
    second = start_and_terminate()  # the stopped stage starts again; finished ones are kept
    assert "→ i0-prompt-generator" in second and "→ i0-keywords" not in second


def test_raising_iterations_continues_a_finished_run(tiny_model: str, tmp_path: Path):
    """iterations 1 → 2 on a finished run: iteration 2 runs (new keyword lists, no keywords stage redone) and
    succeeds; nothing finished before is redone."""
    storage = tmp_path / "runs"
    spec = tiny_spec(tiny_model, str(storage), iterations=1)
    run_file = write_run(tmp_path / "run.yaml", "grow", spec)
    run_dir = storage / "default" / "grow"
    first = synpo("run", str(run_file), "--no-report")
    out, _ = first.communicate(timeout=1800)
    assert first.returncode == 0, out
    done_before = manifests(run_dir)
    assert "iter-1/evaluate/manifest.json" in done_before and not (run_dir / "iter-2").exists()

    write_run(run_file, "grow", {**spec, "iterations": 2})
    second = synpo("run", str(run_file))
    out, _ = second.communicate(timeout=1800)
    assert second.returncode == 0, out
    assert "IndexError" not in out and "Succeeded" in out
    after = manifests(run_dir)
    assert {k: after[k] for k in done_before} == done_before  # iteration 0 and 1 untouched
    for key in ("iter-2/prompts", "iter-2/train", "iter-2/evaluate"):
        assert (run_dir / key / "manifest.json").exists(), key
    ids = [json.loads(line)["id"] for line in (run_dir / "iter-2" / "prompts" / "prompts.jsonl").read_text().splitlines()]
    assert ids and min(ids) >= spec["promptsPerIteration"]  # iteration 2's own keyword lists
    report = (run_dir / "report.md").read_text()
    assert "| 2 " in report and "M0" in report and "references" in report
