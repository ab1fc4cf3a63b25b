"""The artifact store: manifests, checksums, partial stages, shards, fsspec URIs."""

from __future__ import annotations

import json
import os

import pytest

from synpo_workloads import store

pytestmark = pytest.mark.workloads


def _write(output: str, rows: int, shard: int = 0, shards: int = 1, result: dict | None = None) -> str:
    w = store.StageWriter.for_stage(output, {"stage": "responses", "iteration": 1}, shard, shards)
    w.write_rows("responses", ({"index": shard + shards * k, "text": f"r{k}"} for k in range(rows)))
    w.write_json("extra.json", {"shard": shard})
    w.finish(result or {"rows": rows, "score": 0.5 + shard, "seconds": 1.0})
    return w.directory


def test_manifest_written_last_with_checksums_and_versions(tmp_path):
    out = str(tmp_path / "iter-1" / "pairs")
    assert not store.stage_done(out)
    _write(out, 3)
    assert store.stage_done(out)
    manifest = json.loads((tmp_path / "iter-1" / "pairs" / "manifest.json").read_text())
    assert manifest["rows"] == {"responses": 3}
    assert set(manifest["files"]) == {"responses.jsonl", "extra.json"}
    assert len(manifest["files"]["responses.jsonl"]["sha256"]) == 64
    assert manifest["config"]["stage"] == "responses" and "python" in manifest["versions"]
    assert manifest["timings"]["seconds"] >= 0 and manifest["result"]["rows"] == 3
    assert store.stage_result(out) == {"rows": 3, "score": 0.5, "seconds": 1.0}
    assert [r["text"] for r in store.read_rows(out, "responses")] == ["r0", "r1", "r2"]


def test_checksum_mismatch_or_missing_manifest_is_partial_and_discarded(tmp_path):
    out = tmp_path / "stage"
    _write(str(out), 2)
    (out / "responses.jsonl").write_text('{"index": 0, "text": "tampered"}\n')
    assert not store.stage_done(str(out))
    (out / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    store.discard_partial(str(out))
    assert sorted(os.listdir(out)) == ["checkpoints"]  # resume state survives, everything else is gone
    _write(str(out), 2)
    (out / "manifest.json").unlink()
    assert not store.stage_done(str(out))
    with pytest.raises(FileNotFoundError):
        store.stage_result(str(out))


def test_done_stage_survives_discard(tmp_path):
    out = str(tmp_path / "stage")
    _write(out, 2)
    store.discard_partial(out)
    assert store.stage_done(out)


def test_sharded_stage(tmp_path):
    out = str(tmp_path / "iter-1" / "responses")
    _write(out, 2, 1, 2)
    assert os.path.isdir(os.path.join(out, "shard-00001-of-00002"))
    assert not store.stage_done(out, 2)
    _write(out, 3, 0, 2)
    assert store.stage_done(out, 2)
    merged = store.stage_result(out, 2)
    assert merged == {"rows": 5, "score": 1.0, "seconds": 2.0, "shards": 2}
    assert [r["index"] for r in store.read_rows(out, "responses")] == [0, 2, 4, 1, 3]
    # Discarding a sharded stage removes only the broken shard.
    os.unlink(os.path.join(out, "shard-00001-of-00002", "manifest.json"))
    store.discard_partial(out, 2)
    assert os.listdir(os.path.join(out, "shard-00001-of-00002")) == []
    assert store.verify(os.path.join(out, "shard-00000-of-00002"))


def test_fsspec_memory_store():
    out = "memory://synpo-test/run/iter-1/pairs"
    assert not store.stage_done(out)
    w = store.StageWriter.for_stage(out, {"stage": "pairs"})
    w.write_rows("pairs", [{"a": 1}, {"a": 2}])
    model = w.local_dir("model")  # uploaded on finish
    with open(os.path.join(model, "config.json"), "w") as f:
        f.write("{}")
    w.finish({"rows": 2})
    assert store.stage_done(out)
    assert store.exists(out + "/model/config.json")
    assert [r["a"] for r in store.read_rows(out, "pairs")] == [1, 2]
    assert store.stage_result(out) == {"rows": 2}
