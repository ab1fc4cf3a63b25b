"""prompt-generator: SFT of M0 on instruction(keywords) → <question>seed prompt</question><solution>gold</solution>.
Trained once per run; the model is saved to <output>/model (with its tokenizer)."""

from __future__ import annotations

import random

from .. import store, templates, training
from ._common import checkpoints_dir, drop_checkpoints, rows_or_fail, select_seed


def run(ctx) -> dict:
    rows = rows_or_fail(ctx.input("keywords"), "generator_train", "keywords")
    rows = [r for _, r in select_seed(rows, ctx.spec.prompt_generator.max_seed_examples,
                                      random.Random(ctx.seed("generator-examples")))]
    examples = [{"prompt": templates.generator_prompt(r["keywords"]),
                 "completion": templates.generator_target(r["question"], r["solution"])} for r in rows]
    model_dir = ctx.writer.local_dir("model")
    ckpt = checkpoints_dir(ctx)
    stats = training.sft(ctx.model("base"), examples, ctx.spec.prompt_generator, model_dir=model_dir,
                         checkpoints=ckpt, seed=ctx.seed("sft"), dtype=ctx.spec.model.dtype)
    ctx.after_finish.append(lambda: drop_checkpoints(ckpt))  # only once the manifest is written
    return {"rows": len(examples), "model": store.join(ctx.output, "model"), **stats}
