"""train: preference optimisation of M0 on all pairs so far (the accumulated dataset) → M_t.

SimPO by default (TRL CPOTrainer, loss_type=simpo, cpo_alpha=0, simpo_gamma=γ, β; its forward on packed rows,
`training.packed_cpo_trainer`), DPO on request.
Checkpoints in <output>/checkpoints; a rerun after a kill resumes from the last one. The model is saved to
<output>/model with its tokenizer. The result carries the trained model's rewardAccuracy and rewardMargin on the
training pairs (training.reward_figures: did training learn its pairs?); the run has no held-out pairs yet, so the
heldOut figures training.preference can give are absent.
"""

from __future__ import annotations

from .. import store, training
from ..errors import ConfigError
from ._common import checkpoints_dir, drop_checkpoints, rows_or_fail


def run(ctx) -> dict:
    rows = rows_or_fail(ctx.input("pairs"), "dataset", "pairs")
    if not rows:
        raise ConfigError("train: the pair dataset is empty — no pair passed the filters "
                          "(lower spec.filter.minMargin or raise spec.promptsPerIteration)")
    pairs = [{"prompt": [{"role": "user", "content": r["prompt"]}],
              "chosen": [{"role": "assistant", "content": r["chosen"]}],
              "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]
    model_dir = ctx.writer.local_dir("model")
    ckpt = checkpoints_dir(ctx)
    stats = training.preference(ctx.model("base"), pairs, ctx.spec.training, model_dir=model_dir,
                                checkpoints=ckpt, seed=ctx.seed("train"), dtype=ctx.spec.model.dtype)
    ctx.after_finish.append(lambda: drop_checkpoints(ckpt))  # only once the manifest is written
    return {"rows": len(rows), "lossType": ctx.spec.training.loss, "model": store.join(ctx.output, "model"), **stats}
