"""prompts: the generator writes synthetic prompts from this iteration's keyword lists.

Generation starts inside `<question>` (the opening of every training target) and stops at `</question>`:
only the question is kept (docs/paper.md: the generated solution is discarded), so the solution is not generated.
Keyword lists: positions (t-1)·m .. t·m-1 of the run's seeded stream over the keywords stage's paragraphs
(text.keyword_stream), so a run whose iterations are raised gets new lists for the new iterations.
A malformed output (no closed question, empty question) is sampled again, with another seed, up to
RESAMPLE_ROUNDS times; what is still malformed is dropped, and so are near duplicates (text.dedupe:
normalised-token Jaccard ≥ 0.8 with an earlier prompt of this iteration; env SYNPO_DEDUPE_THRESHOLD).
"""

from __future__ import annotations

import os
from dataclasses import replace

from .. import templates, text
from ..errors import ConfigError, DataError
from ._common import engine, rows_or_fail, sampling

RESAMPLE_ROUNDS = 2


def _question(output: str):
    # The prefill opened the question; a model that opens it again is forgiven the duplicate tag.
    return text.parse_tagged(output if output.startswith(templates.GENERATOR_PREFILL)
                             else templates.GENERATOR_PREFILL + output)


def keyword_lists(ctx) -> list[dict]:
    """This iteration's keyword lists {id, paragraph, keywords}; id is the list's position in the stream."""
    paragraphs = rows_or_fail(ctx.input("keywords"), "paragraphs", "keywords")
    if not paragraphs:  # a keywords stage written before paragraphs.jsonl existed: its lists, if it has them
        rows = [r for r in rows_or_fail(ctx.input("keywords"), "keywords", "keywords")
                if int(r["iteration"]) == ctx.iteration]
        if rows:
            return rows
        raise DataError(f"inputs.keywords: {ctx.input('keywords')} has no paragraphs.jsonl (written by an older "
                        f"synpo) and no keyword lists for iteration {ctx.iteration}; delete that stage directory "
                        "to have it redone")
    candidates: list[list[str]] = []
    for row in paragraphs:
        candidates.extend([[]] * (int(row["paragraph"]) + 1 - len(candidates)))
        candidates[int(row["paragraph"])] = row["candidates"]
    m = ctx.spec.prompts_per_iteration
    start = (ctx.iteration - 1) * m
    lists = text.keyword_stream(candidates, start, m, ctx.spec.prompt_generator.keywords_per_prompt,
                                seed=ctx.spec.random_seed)
    return [{"id": start + n, "paragraph": p, "keywords": kw} for n, (p, kw) in enumerate(lists)]


def run(ctx) -> dict:
    rows = keyword_lists(ctx)
    eng = engine(ctx, ctx.model("generator"))
    prompts = [templates.generator_prompt(r["keywords"]) for r in rows]
    resampled = 0
    try:
        params = sampling(ctx, stop=("</question>",), prefill=templates.GENERATOR_PREFILL)
        outputs = eng.generate(prompts, params)
        for round_ in range(1, RESAMPLE_ROUNDS + 1):
            bad = [i for i, o in enumerate(outputs) if _question(o) is None]
            if not bad:
                break
            resampled += len(bad)
            again = eng.generate([prompts[i] for i in bad], replace(params, seed=params.seed + round_))
            for i, output in zip(bad, again, strict=True):
                outputs[i] = output
    finally:
        eng.close()
    parsed = [_question(o) for o in outputs]
    wellformed = [(r, p[0]) for r, p in zip(rows, parsed, strict=True) if p is not None]
    threshold = float(os.environ.get("SYNPO_DEDUPE_THRESHOLD", "0.8"))
    keep = text.dedupe([q for _, q in wellformed], threshold)
    kept = [wellformed[i] for i in keep]
    if not kept:
        raise ConfigError(f"prompts: the generator wrote no well-formed prompt ({len(rows)} prompts, each sampled up "
                          f"to {RESAMPLE_ROUNDS + 1} times); train it longer "
                          "(spec.promptGenerator.epochs/learningRate) or raise spec.generation.maxNewTokens")
    ctx.writer.write_rows("prompts", ({"index": n, "id": r["id"], "prompt": q, "keywords": r["keywords"]}
                                      for n, (r, q) in enumerate(kept)))
    ctx.writer.write_rows("raw", ({"id": r["id"], "output": o} for r, o in zip(rows, outputs, strict=True)))
    return {"rows": len(kept), "generated": len(rows), "resampled": resampled,
            "malformed": len(rows) - len(wellformed), "duplicates": len(wellformed) - len(kept), **eng.result()}
