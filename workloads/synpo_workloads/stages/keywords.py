"""keywords: the corpus' keyword candidates, and the prompt generator's training examples.

Outputs:
- paragraphs.jsonl — one row per corpus paragraph with at least k candidates {paragraph, candidates} (stop words
  and names dropped; see text.keyword_candidates). The prompts stage of iteration t draws its keyword lists from
  them (text.keyword_stream, positions (t-1)·m .. t·m-1), so nothing here depends on the iteration count and
  raising spec.iterations needs no new keywords stage.
- generator_train.jsonl — one row per usable seed pair {seedIndex, keywords, question, solution}: k − noise
  keywords from seed prompt i plus `noise` from a seed prompt j ≠ i.
Deterministic given spec.randomSeed. Runs on CPU.
"""

from __future__ import annotations

import random

from .. import data_io, text
from ..errors import DataError


def run(ctx) -> dict:
    spec = ctx.spec
    seed_rows = data_io.read_jsonl(ctx.data("seed"), "seed")
    corpus_rows = data_io.read_jsonl(ctx.data("corpus"), "corpus")
    k = spec.prompt_generator.keywords_per_prompt
    noise = min(spec.prompt_generator.noise_keywords, k - 1)

    candidates = [text.keyword_candidates(r["text"]) for r in corpus_rows]
    usable = [{"paragraph": i, "candidates": c} for i, c in enumerate(candidates) if len(c) >= k]
    if not usable:
        raise DataError(f"{ctx.data('corpus')}: no paragraph has {k} usable keywords "
                        "(after dropping stop words and names)")
    ctx.writer.write_rows("paragraphs", usable)

    rng = random.Random(ctx.seed("seed"))
    seed_candidates = [text.keyword_candidates(r["prompt"], min_len=3) for r in seed_rows]
    examples = []
    for i, row in enumerate(seed_rows):
        kw = text.generator_keywords(seed_candidates, i, k, noise, rng)
        if kw:
            examples.append({"seedIndex": i, "keywords": kw, "question": row["prompt"], "solution": row["response"]})
    if not examples:
        raise DataError(f"{ctx.data('seed')}: no seed prompt has a usable keyword")
    ctx.writer.write_rows("generator_train", examples)
    return {"rows": len(usable), "generatorExamples": len(examples), "paragraphsUsable": len(usable)}
