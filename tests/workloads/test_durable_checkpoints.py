"""Durable training checkpoints on object storage (the local S3 server): a 2-node train stage (two torchrun
"nodes", gloo) whose rank 0 is SIGKILLed right after its first checkpoint resumes from that checkpoint on the
retry, even with every node's local copy gone (new pods), never from a half-uploaded newer one, and ends with the
manifest of an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid

import pytest
from wl_helpers import DATA, tiny_spec

from synpo_operator.api.run import SynPORunSpec
from synpo_operator.executors.local import LocalExecutor
from synpo_operator.plan.graph import stage_graph
from synpo_operator.plan.planner import StagePhase, Start
from synpo_operator.plan.stage_config import stage_config
from synpo_workloads import checkpoints, store
from synpo_workloads.runtime import run_stage

pytestmark = pytest.mark.workloads

PAIRS = 16
BATCH = 4  # 4 steps, one checkpoint after each (SYNPO_SAVE_STEPS=1)


def _train_stage(model: str, root: str, nodes: int, run: str = "ckpt"):
    spec = SynPORunSpec.model_validate(tiny_spec(
        model, root, training={"batchSize": BATCH, "epochs": 1.0, "learningRate": 1e-3, "maxLength": 128},
        resources={"gpusPerPod": 0, "training": {"nodes": nodes}}))
    node = next(n for n in stage_graph(spec) if n.id.name == "train")
    config = stage_config(spec, node, namespace="default", run=run, storage_root=root)
    seed = [json.loads(line) for line in (DATA / "seed.jsonl").read_text(encoding="utf-8").splitlines() if line]
    rows = [{"id": i, "prompt": r["prompt"][:120], "chosen": r["response"][:80], "rejected": r["response"][:25]}
            for i, r in enumerate(seed[:PAIRS])]
    writer = store.StageWriter.for_stage(config["inputs"]["pairs"], {"stage": "pairs"})
    writer.write_rows("dataset", rows)
    writer.finish({"pairs": len(rows)})
    return spec, node, config


def _run(executor: LocalExecutor, node, attempt: int, timeout: float = 600):
    assert executor.start([Start(node, attempt)]) == [True]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = executor.records()[node.key]
        if record.state.phase != StagePhase.RUNNING:
            return record
        executor.wait(2)
    executor.stop()
    raise AssertionError(f"{node.key} still running after {timeout}s")


def _shape(manifest: dict) -> tuple:
    return sorted(manifest["files"]), manifest["rows"], sorted(set(manifest["result"]) - {"resumedFrom", "seconds"})


def test_killed_two_node_stage_resumes_from_its_checkpoint_on_the_store(tiny_model, s3_env, monkeypatch):
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    s3_env.create_bucket(bucket)
    fs = s3_env.filesystem()

    # uninterrupted (one process, in this one)
    _, _, config = _train_stage(tiny_model, f"s3://{bucket}/whole", nodes=1)
    whole = run_stage("train", config)
    assert "resumedFrom" not in whole
    reference = store.load_manifest(config["output"])

    # two nodes; rank 0 is SIGKILLed right after checkpoint-1 is saved and committed
    root = f"s3://{bucket}/killed"
    spec, node, config = _train_stage(tiny_model, root, nodes=2, run=f"ckpt-{bucket}")
    out, ckpts = config["output"], store.join(config["output"], store.CHECKPOINTS)
    executor = LocalExecutor(spec, name=f"ckpt-{bucket}", storage_root=root, extra_env={
        "SYNPO_SAVE_STEPS": "1", "SYNPO_FAULT_AFTER_STEP": "1", "SYNPO_FAULT_RANK": "0"})
    failed = _run(executor, node, 1)
    assert failed.state.phase == StagePhase.FAILED and failed.state.retryable, failed.state.message
    assert "simulated kill after step 1" in (executor.logs_dir / f"{node.key}-node-0.log").read_text()
    assert not executor.running() and not store.stage_done(out)
    assert checkpoints.newest_complete(ckpts) == "checkpoint-1"
    committed = store.load_manifest(store.join(ckpts, "checkpoint-1"))
    assert {"trainer_state.json", "rng_state_0.pth", "rng_state_1.pth"} <= set(committed["files"])  # both ranks'

    # new pods: no node keeps its local copy; a newer checkpoint half uploaded (no manifest) must not be taken
    for group in ("0", "1"):
        monkeypatch.setenv("GROUP_RANK", group)
        shutil.rmtree(checkpoints.local_dir(ckpts), ignore_errors=True)
    prefix = ckpts.removeprefix("s3://")
    for name in committed["files"]:
        fs.copy(f"{prefix}/checkpoint-1/{name}", f"{prefix}/checkpoint-3/{name}")
    fs.pipe_file(f"{prefix}/checkpoint-3/trainer_state.json", b"{}")  # what a kill mid-upload leaves
    assert checkpoints.newest_complete(ckpts) == "checkpoint-1"

    executor.extra_env = {"SYNPO_SAVE_STEPS": "1"}
    record = _run(executor, node, 2)
    assert record.state.phase == StagePhase.SUCCEEDED, record.state.message
    assert record.result["resumedFrom"] == "checkpoint-1"  # resumed at step 1, not from step 0
    assert record.result["steps"] == whole["steps"] == PAIRS // BATCH
    node1 = (executor.logs_dir / f"{node.key}-node-1.log").read_text()
    assert "checkpoint-1: downloaded" in node1  # the other node fetched it from the store
    assert store.verify(out) and _shape(store.load_manifest(out)) == _shape(reference)
    fs.invalidate_cache()
    # checkpoints dropped once the stage's manifest is written (SeaweedFS keeps an empty folder), local copies too
    assert [key for key in fs.find(prefix) if key.rstrip("/") != prefix] == []
    for group in ("0", "1"):
        monkeypatch.setenv("GROUP_RANK", group)
        assert not os.path.exists(checkpoints.local_dir(ckpts))


def test_only_complete_checkpoints_count_and_two_are_kept(tmp_path, monkeypatch):
    """One process on fsspec's memory store (no ETags: files are hashed): upload, prune, pick, download, drop."""
    monkeypatch.setenv("SYNPO_CACHE", str(tmp_path))
    ckpts = f"memory://{uuid.uuid4().hex}/train/checkpoints"
    local = checkpoints.local_dir(ckpts)
    for step in (1, 2, 3):
        os.makedirs(f"{local}/checkpoint-{step}/sub")
        for name, data in (("trainer_state.json", b"{}"), ("rng_state.pth", b"r"), ("sub/model.bin", b"m" * step)):
            with open(f"{local}/checkpoint-{step}/{name}", "wb") as f:
                f.write(data)
        checkpoints.upload(ckpts, step)
    assert store._listdir(ckpts) == ["checkpoint-2", "checkpoint-3"]  # the newest two
    assert checkpoints.newest_complete(ckpts) == "checkpoint-3"
    store.write_bytes_atomic(f"{ckpts}/checkpoint-3/sub/model.bin", b"xxx")  # same size, other bytes
    assert checkpoints.newest_complete(ckpts) == "checkpoint-2"

    shutil.rmtree(local)  # a new pod
    resumed = checkpoints.resume_point(ckpts)
    assert resumed == f"{local}/checkpoint-2"
    assert open(f"{resumed}/sub/model.bin", "rb").read() == b"mm"
    checkpoints.drop(ckpts)
    assert not os.path.exists(local) and not store.exists(ckpts)
