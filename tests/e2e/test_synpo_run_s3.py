"""`synpo run` with everything on a real S3 server: model, data and artifacts on s3://, credentials and endpoint
from the environment (as spec.env secretKeyRefs give stage pods). A stage SIGKILLed in the middle of its upload
is redone by the next run and its half-written objects are never read; finished stages are not redone (their
manifests untouched); the base model is fetched once into the cache every stage shares."""

from __future__ import annotations

import os
import shutil
import signal
import time
import uuid
from importlib import resources
from pathlib import Path

import pytest

from synpo_workloads import store

from .conftest import tiny_spec, write_run
from .test_synpo_run import ENV, _stage_pids, synpo

pytestmark = [pytest.mark.workloads, pytest.mark.slow]


def test_run_on_s3_survives_a_kill_mid_upload(tiny_model: str, s3, tmp_path: Path, monkeypatch):
    bucket = f"e2e-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(bucket)
    fs = s3.filesystem()
    fs.put(tiny_model.rstrip("/") + "/", f"{bucket}/models/tiny/", recursive=True)
    for role in ("seed", "corpus", "eval"):
        data = (resources.files("synpo_workloads") / "data" / f"{role}.jsonl").read_bytes()
        fs.pipe_file(f"{bucket}/data/{role}.jsonl", data)
    spec = tiny_spec(f"s3://{bucket}/models/tiny", f"s3://{bucket}/runs", iterations=1,
                     evaluation={"judges": [{"type": "similarity"}], "maxPrompts": 4, "baseline": False})
    spec["data"] = {role: f"s3://{bucket}/data/{role}.jsonl" for role in ("seed", "corpus", "eval")}
    name = f"s3-{uuid.uuid4().hex[:8]}"
    run_file = write_run(tmp_path / "run.yaml", name, spec)
    prefix = f"{bucket}/runs/default/{name}"
    state = Path.home() / ".cache" / "synpo" / "runs" / "default" / name  # logs of runs on object storage
    for key, value in {**s3.env(), "SYNPO_CACHE": str(tmp_path / "cache")}.items():
        monkeypatch.setitem(ENV, key, value)  # the stage processes'
        monkeypatch.setenv(key, value)  # this process's store checks
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()
    try:
        # 1. Pause the prompt generator after its first object; SIGKILL synpo run and the stage right then.
        monkeypatch.setitem(ENV, "SYNPO_TEST_PAUSE_AFTER_PUT", "prompt-generator:600")
        first = synpo("run", str(run_file), "--no-report")
        stage = f"{prefix}/iter-0/prompt-generator"
        deadline = time.monotonic() + 900
        while True:
            fs.invalidate_cache()
            if fs.exists(stage) and fs.find(stage):
                break
            assert first.poll() is None, first.stdout.read()
            assert time.monotonic() < deadline, "the prompt generator never put an object"
            time.sleep(0.5)
        first.kill()
        first.wait()
        for pid in _stage_pids(state / "configs" / "i0-prompt-generator.json"):
            os.kill(pid, signal.SIGKILL)
        fs.invalidate_cache()
        half = fs.find(stage)
        assert half and f"{stage}/manifest.json" not in half
        # Poison the half-written objects: a reader that trusted them would fail or train on garbage.
        for key in half:
            fs.pipe_file(key, b"half-written garbage")
        keywords = fs.info(f"{prefix}/iter-0/keywords/manifest.json")
        monkeypatch.delitem(ENV, "SYNPO_TEST_PAUSE_AFTER_PUT")

        # 2. The same command again: the killed stage is redone, the finished one is not.
        second = synpo("run", str(run_file))
        out, _ = second.communicate(timeout=1800)
        assert second.returncode == 0 and "Succeeded" in out, out
        assert "→ i0-prompt-generator" in out and "→ i0-keywords" not in out
        fs.invalidate_cache()
        again = fs.info(f"{prefix}/iter-0/keywords/manifest.json")
        assert (again["ETag"], again["LastModified"]) == (keywords["ETag"], keywords["LastModified"])
        root = f"s3://{prefix}"
        assert store.stage_done(f"{root}/iter-0/prompt-generator")  # every listed object matches its checksum
        assert all(fs.cat_file(key) != b"half-written garbage" for key in fs.find(stage))
        for key in ("iter-1/train", "iter-1/evaluate", "iter-1/pairs"):
            assert store.stage_done(f"{root}/{key}"), key
        assert fs.exists(f"{prefix}/report.md") and fs.exists(f"{prefix}/iter-1/train/model/config.json")

        # 3. One fetch of the base model for all the stages that load it (prompt generator, base responses,
        # improver, train), across both runs: they share the cache.
        logs = "".join(p.read_text() for p in (state / "logs").glob("*.log"))
        assert logs.count(f"model s3://{bucket}/models/tiny: fetched") == 1, logs[-3000:]
    finally:
        shutil.rmtree(state, ignore_errors=True)
