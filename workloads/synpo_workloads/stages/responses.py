"""responses / base-responses: the policy answers the synthetic prompts (its own chat template).

Shard i of n takes the prompts with index % n == i. base-responses uses M0 (the rejected side of every
pair, kept from M0 in all iterations); responses uses M_{t-1} for t > 1.
"""

from __future__ import annotations

from .. import templates
from ._common import engine, rows_or_fail, sampling


def run(ctx) -> dict:
    rows = ctx.my_rows(rows_or_fail(ctx.input("prompts"), "prompts", "prompts"))
    eng = engine(ctx, ctx.model("policy"))
    try:
        outputs = eng.generate([templates.policy_prompt(r["prompt"]) for r in rows], sampling(ctx))
    finally:
        eng.close()
    ctx.writer.write_rows("responses", ({"index": r["index"], "prompt": r["prompt"], "response": o}
                                        for r, o in zip(rows, outputs, strict=True)))
    return {"rows": len(rows), "empty": sum(not o for o in outputs), **eng.result()}
