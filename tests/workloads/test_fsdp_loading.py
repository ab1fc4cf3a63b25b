"""FSDP loading that fits host memory: with two training processes (torchrun, gloo on the CPU) only rank 0 reads
the model to train and DPO's reference; rank 1 builds both empty and gets its shards from rank 0
(training.load_trained_model / load_reference_model, fsdp_config cpu_ram_efficient_loading; the reference sharded
by training.sharded_reference_dpo_trainer inside TRL's DPOTrainer), so its resident memory grows by about its
shards, not by whole copies.

The model (~390 MB of float32, no tensor over 7% of it, so one broadcast tensor in flight stays small) is
random-initialised here and serves as both policy and reference; fsdp_rss_probe.py is each process, building
the DPO trainer and sharding the policy as Trainer.train does. Rank 1's peak RSS growth, as a share of the
model's 389 MB (2 shared cores), the old way (`--before`: from_pretrained in every process, no
cpu_ram_efficient_loading, TRL preparing the reference) → now: policy 1.17 → 0.58, reference 1.17 → 0.59,
both (peak over the two, as a share of two copies) 0.85 → 0.56.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from wl_helpers import build_tiny_model

pytestmark = pytest.mark.workloads

PROBE = Path(__file__).with_name("fsdp_rss_probe.py")
MAX_SHARE = 0.75
"""Rank 1's peak growth for one model, as a share of the model's bytes: its half (the shard) plus one tensor in
flight and allocator slack; every process holding a full copy again is 1.0 or more."""


@pytest.fixture(scope="module")
def model_300mb(tmp_path_factory) -> tuple[Path, int, float]:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=8000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=12, num_key_value_heads=12, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    assert size >= 300e6
    path = tmp_path_factory.mktemp("llama-390mb")
    model.save_pretrained(path)
    tokenizer = build_tiny_model(tmp_path_factory.mktemp("tokenizer"))  # its vocabulary fits the model's
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(path)
    return path, size, checksum


def _probe(model: Path, out: Path, *extra: str) -> dict[int, dict]:
    out.mkdir()
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    # A fixed mmap threshold: glibc returns each freed broadcast buffer at once instead of keeping it in its heap
    # (+0.3 of the model here); on GPUs those buffers are device memory.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path),
           "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    proc = subprocess.run([torchrun, "--standalone", "--nproc-per-node=2", str(PROBE), str(model), str(out), *extra],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {r: json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)}


def test_only_rank_zero_holds_a_full_copy(model_300mb, tmp_path):
    model, size, checksum = model_300mb
    ranks = _probe(model, tmp_path / "after")
    for rank in ranks.values():
        assert rank["sharded"] and rank["referenceIsOurs"] and rank["referenceFrozen"], rank
        # sharded layer by layer like the policy (TRL's own preparation: one unit, the whole model gathered at once)
        assert rank["referenceFsdpUnits"] > 12, rank
        # TRL's reference forward (fused LM head) on the sharded reference: the policy's log-probs, same checkpoint
        assert rank["logpsMaxDiff"] == pytest.approx(0, abs=1e-5), rank
    # rank 1 never read the checkpoint, yet the shards gathered back are the checkpoint's weights
    assert ranks[1]["policyChecksum"] == pytest.approx(checksum, rel=1e-9, abs=1e-6)
    assert ranks[1]["referenceChecksum"] == pytest.approx(checksum, rel=1e-9, abs=1e-6)
    share = {key: ranks[1][key] / size for key in ("policyGrowthBytes", "referenceGrowthBytes", "growthBytes")}
    assert share["policyGrowthBytes"] < MAX_SHARE, (share, ranks)
    assert share["referenceGrowthBytes"] < MAX_SHARE, (share, ranks)
    assert share["growthBytes"] < 2 * MAX_SHARE, (share, ranks)  # policy and reference: two copies the old way
