"""improver: the response improver R_t, SFT from M0 (every iteration) on
improver-instruction(seed prompt, M_{t-1}'s answer) → gold answer.

Only examples where the filter scorer prefers the gold answer over the model's by more than
spec.filter.minMargin (score(gold) − score(answer), or a pairwise scorer's margin) are kept (paper §3). With the
similarity scorer both sides are scored reference-free (cosine to the prompt), since the gold answer is the
reference. Outputs examples.jsonl (every scored example
with `kept`) and <output>/model.

Under torchrun (several training processes) every rank generates its share of M_{t-1}'s answers on its own
GPUs and all ranks get every answer back in order (ranks.generate_on_every_rank); rank 0 then scores them and
writes examples.jsonl, the examples reach the other ranks over the process group, and all train together.
"""

from __future__ import annotations

import random

from .. import data_io, ranks, store, templates, training
from ..errors import ConfigError
from ..judges import make_scorer, margins
from ..runtime import is_main_process
from ._common import checkpoints_dir, drop_checkpoints, engine, sampling, select_seed


def run(ctx) -> dict:
    spec = ctx.spec
    if training.world_size() == 1:
        rows = _scored_examples(ctx)
    else:
        rows = _scored_examples_on_every_rank(ctx)
    kept = [r for r in rows if r["kept"]]
    examples = [{"prompt": templates.improver_prompt(r["prompt"], r["response"]),
                 "completion": [{"role": "assistant", "content": r["gold"]}]} for r in kept]
    model_dir = ctx.writer.local_dir("model")
    ckpt = checkpoints_dir(ctx)
    stats = training.sft(ctx.model("base"), examples, spec.improver, model_dir=model_dir, checkpoints=ckpt,
                         seed=ctx.seed("sft"), dtype=spec.model.dtype)
    ctx.after_finish.append(lambda: drop_checkpoints(ckpt))  # only once the manifest is written
    return {"rows": len(kept), "examplesTotal": len(rows), "model": store.join(ctx.output, "model"), **stats}


def _seed(ctx) -> tuple[list[tuple[int, dict]], list[str], list[str]]:
    spec = ctx.spec
    seed = select_seed(data_io.read_jsonl(ctx.data("seed"), "seed"), spec.improver.max_seed_examples,
                       random.Random(ctx.seed("seed")))
    return seed, [r["prompt"] for _, r in seed], [r["response"] for _, r in seed]


def _scored_examples(ctx) -> list[dict]:
    """M_{t-1}'s answers to the seed prompts (one process: the pod's GPUs are its engines')."""
    seed, prompts, golds = _seed(ctx)
    eng = engine(ctx, ctx.model("policy"))
    try:
        answers = eng.generate([templates.policy_prompt(p) for p in prompts], sampling(ctx))
    finally:
        eng.close()
    return _score(ctx, seed, prompts, golds, answers)


def _scored_examples_on_every_rank(ctx) -> list[dict]:
    """The same under torchrun: every rank generates its share, rank 0 scores and writes, all get the rows."""
    import torch.distributed as dist

    spec = ctx.spec
    seed, prompts, golds = _seed(ctx)
    g = spec.generation
    gpus = int(ctx.config.get("gpus", 0))
    tp = int(ctx.config.get("tensorParallelSize") or max(gpus, 1)) if g.engine == "vllm" else 1
    answers = ranks.generate_on_every_rank(
        [templates.policy_prompt(p) for p in prompts], sampling(ctx),
        engine={"name": g.engine, "model_ref": ctx.model("policy"), "dtype": spec.model.dtype,
                "batch_size": g.batch_size, "gpu_memory_utilization": g.gpu_memory_utilization},
        gpus=gpus, tensor_parallel_size=tp)
    rows = _score(ctx, seed, prompts, golds, answers) if is_main_process() else None
    box = [rows]
    dist.broadcast_object_list(box, src=0)  # no shared file needed between nodes
    return box[0]


def _score(ctx, seed, prompts, golds, answers) -> list[dict]:
    """The answers scored against the gold answers; writes examples.jsonl (rank 0)."""
    spec = ctx.spec
    scorer = make_scorer(spec.filter.scorer.to_api())
    gaps, s_gold, s_model = margins(scorer, prompts, golds, answers)
    margin = spec.filter.min_margin
    rows = [{"seedIndex": i, "prompt": p, "response": a, "gold": g,
             **({"scoreGold": s_gold[k], "scoreModel": s_model[k]} if s_gold is not None else {}),
             "margin": m, "kept": m > margin}
            for k, ((i, _), p, a, g, m) in enumerate(zip(seed, prompts, answers, golds, gaps, strict=True))]
    ctx.writer.write_rows("examples", rows)
    if not any(r["kept"] for r in rows):
        raise ConfigError(f"improver: no seed example passed spec.filter.minMargin={margin} "
                          f"(gold beat the model's answer by more than the margin in 0 of {len(rows)})")
    return rows
