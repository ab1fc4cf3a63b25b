"""A stage program killed while writing (issue #8): the real `python -m synpo_workloads keywords` (CPU, no
model) on the shipped data, killed with SIGKILL

- at deterministic points: a data file torn in the middle, after the first data file, just before the
  manifest (a hook wraps `store.write_bytes_atomic` in the stage process and kills the process itself);
- at random moments (several times in a row, without cleaning up in between);

and afterwards files corrupted after the manifest was written (a flipped byte keeping the size, a truncated
file, a damaged manifest). Each time `store.stage_done` must be False until a re-run redoes the stage, and the
re-run's data files must be byte-identical to an undisturbed run's (the stage is deterministic given the
spec's randomSeed): nothing lost, nothing duplicated, a valid manifest.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synpo_operator.api.run import SynPORunSpec
from synpo_operator.plan.graph import stage_graph
from synpo_operator.plan.stage_config import stage_config
from synpo_workloads import store

ROOT = Path(__file__).resolve().parents[2]

HOOK = r"""
import os, runpy, signal, sys
from synpo_workloads import store
mode, stage, config = sys.argv[1], sys.argv[2], sys.argv[3]
orig = store.write_bytes_atomic
calls = []

def die():
    sys.stdout.flush(); sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

def hooked(path, data):
    calls.append(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    last = path.endswith(store.MANIFEST)
    if mode == "torn-file":            # a non-atomic writer dying half-way through its first file
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2]); f.flush(); os.fsync(f.fileno())
        die()
    if mode == "after-first-file" and len(calls) == 2:
        die()
    if mode == "before-manifest" and last:
        die()
    if mode == "torn-manifest" and last:
        with open(path, "wb") as f:
            f.write(data[: len(data) // 3])
        die()
    orig(path, data)

store.write_bytes_atomic = hooked
sys.argv = ["synpo_workloads", stage, "--config", config]
runpy.run_module("synpo_workloads", run_name="__main__")
"""


def _config(tmp_path: Path) -> dict:
    spec = SynPORunSpec.model_validate({
        "model": {"base": "org/unused"},
        "data": {"seed": "builtin:seed.jsonl", "corpus": "builtin:corpus.jsonl", "eval": "builtin:eval.jsonl"},
        "iterations": 2, "promptsPerIteration": 3000, "pairsPerIteration": 10, "randomSeed": 11,
        "storage": {"uri": str(tmp_path / "store")}, "resources": {"gpusPerPod": 0},
    })
    node = next(n for n in stage_graph(spec) if n.id.name == "keywords")
    return stage_config(spec, node, namespace="ns", run="crash", storage_root=str(tmp_path / "store"))


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "SYNPO_TERMINATION_LOG": str(tmp_path / "termination-log"),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "workloads"), str(ROOT / "operator")])}


def _run(tmp_path: Path, config: dict, mode: str | None = None) -> subprocess.CompletedProcess:
    path = tmp_path / "stage.json"
    path.write_text(json.dumps(config))
    if mode is None:
        argv = [sys.executable, "-m", "synpo_workloads", "keywords", "--config", str(path)]
    else:
        argv = [sys.executable, "-c", HOOK, mode, "keywords", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, env=_env(tmp_path), timeout=300)


def _data_files(output: str) -> dict[str, str]:
    manifest = store.load_manifest(output)
    assert manifest is not None and store.verify(output, manifest)
    return {name: info["sha256"] for name, info in manifest["files"].items()}


def _fresh_check(output: str) -> bool:
    """stage_done in a new process (a re-run is one; file_digest caches by path, size and mtime)."""
    code = f"from synpo_workloads import store; print(store.stage_done({output!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, str]:
    """Checksums of the data files of an undisturbed run."""
    tmp = tmp_path_factory.mktemp("reference")
    config = _config(tmp)
    proc = _run(tmp, config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = _data_files(config["output"])
    assert set(files) == {"paragraphs.jsonl", "generator_train.jsonl"}
    return files


@pytest.mark.parametrize("mode", ["torn-file", "after-first-file", "before-manifest", "torn-manifest"])
def test_killed_mid_write_is_not_done_and_is_redone(tmp_path, reference, mode):
    config = _config(tmp_path)
    out = config["output"]
    proc = _run(tmp_path, config, mode)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])
    assert not store.stage_done(out), f"{mode}: a killed stage counts as done"
    assert os.listdir(out), "the kill left nothing behind: the test did not exercise a partial write"
    proc = _run(tmp_path, config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not redone" not in proc.stderr
    assert _data_files(out) == reference
    assert sorted(os.listdir(out)) == ["generator_train.jsonl", "manifest.json", "paragraphs.jsonl"]
    result = json.loads((tmp_path / "termination-log").read_text())
    assert result["rows"] == len((Path(out) / "paragraphs.jsonl").read_text().splitlines()) == 245


def test_killed_at_random_moments_repeatedly(tmp_path, reference):
    """SIGKILL at random times (seeded) in successive attempts on the same directory, then a clean run."""
    rng = random.Random(int(os.environ.get("SYNPO_CHAOS_SEED", "8")))
    config = _config(tmp_path)
    path = tmp_path / "stage.json"
    path.write_text(json.dumps(config))
    t0 = time.monotonic()
    assert _run(tmp_path, config).returncode == 0
    full = time.monotonic() - t0
    store._remove(config["output"])
    kills = done_early = partial = 0
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-m", "synpo_workloads", "keywords", "--config", str(path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(tmp_path))
        # kill once the stage has started writing (its output directory exists), a random moment later
        deadline = time.monotonic() + 2 * full + 5
        while not os.path.isdir(config["output"]) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.08))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
        if store.stage_done(config["output"]):
            done_early += 1  # finished before the kill: then it must be complete and correct
            assert _data_files(config["output"]) == reference
            store._remove(config["output"])  # start over, so that the next attempt does work to kill
        elif os.path.isdir(config["output"]) and os.listdir(config["output"]):
            partial += 1  # killed with files written but no valid manifest
    assert kills >= 3, f"the stage finished before most kills ({kills} kills, run takes {full:.1f}s)"
    assert _run(tmp_path, config).returncode == 0
    assert _data_files(config["output"]) == reference
    print(f"RELIABILITY fault=stage-sigkill-random kills={kills} left_partial_files={partial} "
          f"finished_before_kill={done_early} data_lost=0")


@pytest.mark.parametrize("damage", ["flip-byte", "truncate", "flip-manifest-files", "delete-file",
                                    "flip-manifest-result"])
def test_corruption_after_the_manifest_is_detected_and_redone(tmp_path, reference, damage):
    config = _config(tmp_path)
    out = Path(config["output"])
    assert _run(tmp_path, config).returncode == 0
    assert _fresh_check(str(out))
    target = out / ("manifest.json" if damage.startswith("flip-manifest") else "paragraphs.jsonl")
    if damage == "delete-file":
        target.unlink()
    else:
        st = target.stat()
        data = bytearray(target.read_bytes())
        if damage == "truncate":
            data = data[: len(data) - 10]
        elif damage == "flip-manifest-files":  # one hex digit of a recorded sha256
            at = data.index(b'"sha256": "') + len('"sha256": "')
            data[at] = ord("0") if data[at] != ord("0") else ord("1")
        elif damage == "flip-manifest-result":  # the row count in the recorded result: 245 -> 745
            at = data.index(b'"result"')
            at = data.index(b"245", at)
            data[at] = ord("7")
        else:
            data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # bit rot keeps the timestamps
    assert not _fresh_check(str(out)), f"{damage}: corruption not detected"
    proc = _run(tmp_path, config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not redone" not in proc.stderr
    assert _data_files(str(out)) == reference
