"""improver: the response improver R_t, SFT from M0 (every iteration) on
improver-instruction(seed prompt, M_{t-1}'s answer) → gold answer.

Only examples where the filter scorer prefers the gold answer over the model's by more than
spec.filter.minMargin (score(gold) − score(answer), or a pairwise scorer's margin) are kept (paper §3). With the
similarity scorer both sides are scored reference-free (cosine to the prompt), since the gold answer is the
reference. Outputs examples.jsonl (every scored example
with `kept`) and <output>/model.

Under torchrun (several training processes) rank 0 alone generates and scores, with the pod's GPUs to itself,
and writes examples.jsonl; the other processes wait for it (training.wait_for_rank_zero), read the examples
from that file, and all train together.
"""

from __future__ import annotations

import random

from .. import data_io, store, templates, training
from ..errors import ConfigError
from ..judges import make_scorer, margins
from ..runtime import is_main_process
from ._common import checkpoints_dir, drop_checkpoints, engine, sampling, select_seed


def run(ctx) -> dict:
    spec = ctx.spec
    if is_main_process():
        with training.alone():
            rows = _scored_examples(ctx)
    training.wait_for_rank_zero()
    if not is_main_process():
        rows = list(store.iter_jsonl(ctx.writer.path("examples.jsonl")))
    kept = [r for r in rows if r["kept"]]
    examples = [{"prompt": templates.improver_prompt(r["prompt"], r["response"]),
                 "completion": [{"role": "assistant", "content": r["gold"]}]} for r in kept]
    model_dir = ctx.writer.local_dir("model")
    ckpt = checkpoints_dir(ctx)
    stats = training.sft(ctx.model("base"), examples, spec.improver, model_dir=model_dir, checkpoints=ckpt,
                         seed=ctx.seed("sft"), dtype=spec.model.dtype)
    ctx.after_finish.append(lambda: drop_checkpoints(ckpt))  # only once the manifest is written
    return {"rows": len(kept), "examplesTotal": len(rows), "model": store.join(ctx.output, "model"), **stats}


def _scored_examples(ctx) -> list[dict]:
    """M_{t-1}'s answers to the seed prompts, scored against the gold answers; writes examples.jsonl."""
    spec = ctx.spec
    seed = select_seed(data_io.read_jsonl(ctx.data("seed"), "seed"), spec.improver.max_seed_examples,
                       random.Random(ctx.seed("seed")))
    prompts = [r["prompt"] for _, r in seed]
    golds = [r["response"] for _, r in seed]
    eng = engine(ctx, ctx.model("policy"))
    try:
        answers = eng.generate([templates.policy_prompt(p) for p in prompts], sampling(ctx))
    finally:
        eng.close()
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
