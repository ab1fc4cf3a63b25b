"""Packed SimPO with several training processes (training.packed_cpo_trainer, packing.packed_logps(wrapped=...)):
2 torchrun processes over gloo run the packed forward through the shared (DDP) model, and every step's loss
equals one process's on the same global batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from wl_helpers import DATA

pytestmark = pytest.mark.workloads

LOSS_TOLERANCE = 1e-4
"""float32: only the order of the gradient sums differs between one process and two."""

SCRIPT = textwrap.dedent("""
    import json, os, sys
    from synpo_operator.api.run import TrainingSpec
    from synpo_workloads import training

    if __name__ == "__main__":
        model, pairs, out, checkpoints, packed = sys.argv[1:6]
        section = TrainingSpec.model_validate({"batchSize": 4, "epochs": 1.0, "learningRate": 1e-3,
                                               "maxLength": 256, "warmupRatio": 0.0})
        trainer, _ = training.preference_trainer(model, json.load(open(pairs)), section, checkpoints=checkpoints,
                                                 seed=0, dtype="float32")
        if packed == "0":  # TRL's own forward, the reference
            trainer.concatenated_forward = lambda m, b: super(type(trainer), trainer).concatenated_forward(m, b)
        trainer.train()
        with open(f"{out}.{os.environ.get('RANK', '0')}", "w") as f:
            json.dump({"losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
                       "processed": trainer.processed_tokens, "world": trainer.args.world_size}, f)
""")


def _pairs() -> list[dict]:
    seed = [json.loads(line) for line in (DATA / "seed.jsonl").read_text(encoding="utf-8").splitlines() if line]
    cut = [r["response"][: 30 + 25 * (i % 7)] for i, r in enumerate(seed[:16])]  # varied lengths: padding to skip
    return [{"prompt": [{"role": "user", "content": r["prompt"][:200]}],
             "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": c[: len(c) // 3]}]} for r, c in zip(seed, cut, strict=False)]


def _train(tiny_model: str, tmp_path: Path, processes: int, packed: bool = True) -> list[dict]:
    name = f"p{processes}-{int(packed)}"
    script, pairs, out = tmp_path / "train.py", tmp_path / "pairs.json", tmp_path / name
    script.write_text(SCRIPT)
    pairs.write_text(json.dumps(_pairs()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={processes}", str(script), tiny_model, str(pairs), str(out),
                           str(tmp_path / f"ckpt-{name}"), "1" if packed else "0"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(processes)]


def test_packed_simpo_on_two_processes_equals_one(tiny_model, tmp_path):
    (one,) = _train(tiny_model, tmp_path, 1)
    two = _train(tiny_model, tmp_path, 2)
    reference = _train(tiny_model, tmp_path, 1, packed=False)[0]
    assert one["world"] == 1 and [r["world"] for r in two] == [2, 2]
    # the packed forward ran on both ranks (TRL's forward counts nothing), and TRL's did in the reference
    assert one["processed"] > 0 and all(r["processed"] > 0 for r in two) and reference["processed"] == 0
    assert len(one["losses"]) == len(two[0]["losses"]) == 4  # 16 pairs, global batch 4
    for a, b, ref in zip(one["losses"], two[0]["losses"], reference["losses"], strict=True):
        assert abs(a - b) <= LOSS_TOLERANCE, (one["losses"], two[0]["losses"])
        assert abs(a - ref) <= LOSS_TOLERANCE, (one["losses"], reference["losses"])
    assert len(set(one["losses"])) > 1  # the model learns: the steps' losses differ
