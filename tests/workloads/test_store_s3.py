"""The artifact store on a real S3 server (no rename): objects first, the manifest last as the commit marker;
only what a manifest lists (size, ETag, sha256) is trusted; a writer killed between objects leaves a stage that is
discarded and redone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from synpo_workloads import store

pytestmark = pytest.mark.workloads


@pytest.fixture
def bucket(s3_env) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_env.create_bucket(name)
    return name


def _model_writer(out: str, stage: str = "train") -> store.StageWriter:
    w = store.StageWriter.for_stage(out, {"stage": stage, "iteration": 1})
    w.write_rows("pairs", [{"a": 1}, {"a": 2}])
    model = w.local_dir("model")
    for name, size in (("config.json", 10), ("model.safetensors", 300_000), ("tokenizer.json", 50)):
        with open(os.path.join(model, name), "wb") as f:
            f.write(os.urandom(size))
    return w


def test_manifest_lists_exactly_the_objects_written_with_etags(bucket, s3_env):
    out = f"s3://{bucket}/runs/default/r/iter-1/train"
    fs = s3_env.filesystem()
    fs.pipe_file(f"{bucket}/runs/default/r/iter-1/train/stray.jsonl", b'{"a": 99}\n')  # not this writer's
    _model_writer(out).finish({"rows": 2})
    manifest = store.load_manifest(out)
    assert set(manifest["files"]) == {"pairs.jsonl", "model/config.json", "model/model.safetensors",
                                      "model/tokenizer.json"}
    assert all(info["etag"] and len(info["sha256"]) == 64 for info in manifest["files"].values())
    assert manifest["files"]["model/model.safetensors"]["bytes"] == 300_000
    assert store.stage_done(out)
    assert [r["a"] for r in store.read_rows(out, "pairs")] == [1, 2]
    assert list(store.read_rows(out, "stray")) == []  # not listed: never read

    # An object replaced behind the manifest's back (same size, other bytes) no longer verifies.
    key = f"{bucket}/runs/default/r/iter-1/train/model/config.json"
    fs.pipe_file(key, os.urandom(10))
    assert not store.stage_done(out)


def test_store_errors_propagate_instead_of_looking_like_a_partial_stage(bucket, s3_env, monkeypatch):
    if s3_env.kind != "seaweedfs":
        pytest.skip("moto's server accepts any credentials; SeaweedFS checks them")
    out = f"s3://{bucket}/runs/default/r/iter-1/pairs"
    _model_writer(out, "pairs").finish({"rows": 2})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()
    with pytest.raises(PermissionError):
        store.discard_partial(out)  # a wrong key must not get a finished stage discarded
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.secret_key)
    fsspec.filesystem("s3").clear_instance_cache()
    assert store.stage_done(out)


_KILLED_WRITER = """
import os, sys
sys.path.insert(0, {tests!r})
from test_store_s3 import _model_writer
_model_writer({out!r}).finish({{"rows": 2}})
"""


def test_writer_killed_between_objects_is_discarded_and_redone(bucket, s3_env, tmp_path):
    out = f"s3://{bucket}/runs/default/r/iter-1/train"
    prefix = f"{bucket}/runs/default/r/iter-1/train"
    fs = s3_env.filesystem()
    env = {**os.environ, **s3_env.env(), "SYNPO_TEST_PAUSE_AFTER_PUT": "train:60"}
    script = _KILLED_WRITER.format(tests=os.path.dirname(__file__), out=out)
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # the first object (pairs.jsonl) is there, then the writer pauses: kill it
            fs.invalidate_cache()
            if fs.exists(prefix) and fs.find(prefix):
                break
            assert proc.poll() is None and time.monotonic() < deadline, "the writer never put an object"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    left = [k.removeprefix(prefix + "/") for k in fs.find(prefix)]
    assert left and "manifest.json" not in left
    assert not store.stage_done(out)
    with pytest.raises(FileNotFoundError):
        list(store.read_rows(out, "pairs"))  # no manifest: nothing is read

    store.discard_partial(out)
    fs.invalidate_cache()
    assert not fs.exists(prefix) or fs.find(prefix) == []
    manifest = _model_writer(out).finish({"rows": 2})
    assert store.stage_done(out) and json.loads(fs.cat_file(f"{prefix}/manifest.json")) == manifest


_RESOLVE = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
from synpo_workloads import models
print(models.resolve(sys.argv[1]))
"""


def test_stages_sharing_a_cache_fetch_a_model_once(bucket, s3_env, tmp_path):
    """Three stage processes resolve one s3:// model at the same time into one cache (a shared volume in a
    cluster): one fetch, one published directory; a model rewritten at the same URI is fetched again."""
    fs = s3_env.filesystem()
    ref = f"s3://{bucket}/models/tiny"
    fs.pipe_file(f"{bucket}/models/tiny/config.json", b'{"model_type": "llama"}')
    fs.pipe_file(f"{bucket}/models/tiny/model.safetensors", os.urandom(2_000_000))
    env = {**os.environ, **s3_env.env(), "SYNPO_CACHE": str(tmp_path / "cache")}

    def resolve_all(n: int) -> tuple[set[str], str]:
        procs = [subprocess.Popen([sys.executable, "-c", _RESOLVE, ref], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(n)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        return {o.strip() for o, _ in outs}, "".join(e for _, e in outs)

    paths, logs = resolve_all(3)
    assert len(paths) == 1 and logs.count("fetched 2 files") == 1, logs
    local = paths.pop()
    assert open(os.path.join(local, "config.json")).read() == '{"model_type": "llama"}'
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir() if not p.name.startswith(".")] == \
        [os.path.basename(local)]  # no temporary directory left behind

    again, logs = resolve_all(1)  # a later stage: read from the cache
    assert again == {local} and "fetched" not in logs

    fs.pipe_file(f"{bucket}/models/tiny/model.safetensors", os.urandom(2_000_000))  # same URI, new weights
    newer, logs = resolve_all(1)
    assert newer != {local} and logs.count("fetched 2 files") == 1


def test_a_stage_model_is_fetched_as_its_manifest_lists_it(bucket, s3_env, tmp_path, monkeypatch):
    """An object under a finished stage's model/ that its manifest does not list is never fetched."""
    from synpo_workloads import models

    out = f"s3://{bucket}/runs/default/r/iter-1/train"
    _model_writer(out).finish({"rows": 2})
    s3_env.filesystem().pipe_file(f"{bucket}/runs/default/r/iter-1/train/model/stray.bin", b"not listed")
    monkeypatch.setenv("SYNPO_CACHE", str(tmp_path))
    local = models.resolve(f"{out}/model")
    assert sorted(os.listdir(local)) == ["config.json", "model.safetensors", "tokenizer.json"]
