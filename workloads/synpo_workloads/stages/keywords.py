"""keywords: keyword lists for prompt generation, and the prompt generator's training examples.

Outputs:
- keywords.jsonl — promptsPerIteration × iterations rows {id, iteration, paragraph, keywords}: k keywords
  from one corpus paragraph (paper: 3, stop words and names dropped; see text.keyword_candidates).
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

    rng = random.Random(ctx.seed("corpus"))
    candidates = [text.keyword_candidates(r["text"]) for r in corpus_rows]
    total = spec.prompts_per_iteration * spec.iterations
    lists = text.sample_keyword_lists(candidates, total, k, rng)
    if not lists:
        raise DataError(f"{ctx.data('corpus')}: no paragraph has {k} usable keywords "
                        "(after dropping stop words and names)")
    per = spec.prompts_per_iteration
    ctx.writer.write_rows("keywords", (
        {"id": n, "iteration": 1 + n // per, "paragraph": p, "keywords": kw} for n, (p, kw) in enumerate(lists)))

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
    return {"rows": len(lists), "generatorExamples": len(examples),
            "paragraphsUsable": sum(len(c) >= k for c in candidates)}
