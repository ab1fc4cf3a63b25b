"""refine: the improver R_t rewrites M_{t-1}'s responses (sharded by prompt index like the responses)."""

from __future__ import annotations

from .. import templates
from ._common import engine, rows_or_fail, sampling


def run(ctx) -> dict:
    rows = ctx.my_rows(rows_or_fail(ctx.input("responses"), "responses", "responses"))
    eng = engine(ctx, ctx.model("improver"))
    try:
        refined = eng.generate([templates.improver_prompt(r["prompt"], r["response"]) for r in rows], sampling(ctx))
    finally:
        eng.close()
    ctx.writer.write_rows("refined", ({"index": r["index"], "prompt": r["prompt"], "response": r["response"],
                                       "refined": y} for r, y in zip(rows, refined, strict=True)))
    return {"rows": len(rows), "empty": sum(not y for y in refined), **eng.result()}
