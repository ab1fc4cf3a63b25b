"""One whole `synpo run` (1 iteration) with generation.engine: vllm, generation split over 2 shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from wl_helpers import tiny_spec

from synpo_workloads import store

GENERATION_KEYS = ("generatedPrompts", "generatedTokens", "generationSeconds", "tokensPerSecond")


def test_synpo_run_on_vllm(llama3_like: str, tmp_path: Path):
    spec = tiny_spec(llama3_like, str(tmp_path / "runs"), iterations=1,
                     generation={"engine": "vllm", "shards": 2, "gpuMemoryUtilization": 0.3})
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump({"apiVersion": "synpo.dev/v1alpha1", "kind": "SynPORun",
                                        "metadata": {"name": "vllm-run"}, "spec": spec}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "synpo_operator.cli", "run", str(run_file)], capture_output=True,
                          text=True, env=env, timeout=1500)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "Succeeded" in done.stdout

    logs = tmp_path / "runs" / "default" / "vllm-run" / "logs"
    for key in ("i0-evaluate", "i1-prompts", "i1-base-responses-shard-1", "i1-refine-shard-0", "i1-evaluate"):
        assert "init engine" in (logs / f"{key}.log").read_text(), key  # vLLM generated there
    root = tmp_path / "runs" / "default" / "vllm-run" / "iter-1"
    prompts = list(store.read_rows(str(root / "prompts"), "prompts"))
    assert prompts and all(p["prompt"] and "<question>" not in p["prompt"] for p in prompts)
    # sharded generation: each shard answered the prompts with its index residue, together all of them
    for stage in ("base-responses", "refine"):  # iteration 1: M0 answers (no M_{t-1} yet)
        parts = sorted((root / stage).glob("shard-*"))
        assert len(parts) == 2, list((root / stage).iterdir())
        seen = []
        for shard, part in enumerate(parts):
            manifest = json.loads((part / "manifest.json").read_text())
            result = manifest["result"]
            assert all(key in result for key in GENERATION_KEYS), result
            assert result["generatedTokens"] > 0 and result["tokensPerSecond"] > 0
            rows = [json.loads(line) for f in sorted(part.glob("*.jsonl")) for line in f.read_text().splitlines()]
            assert rows and all(r["index"] % 2 == shard for r in rows)
            seen += [r["index"] for r in rows]
        assert sorted(seen) == sorted(p["index"] for p in prompts)
    result = store.stage_result(str(root / "prompts"))
    assert result["generatedPrompts"] >= result["generated"] > 0
