"""pairs: chosen = the refined response ŷ, rejected = M0's response y_0, for each synthetic prompt.

A pair is kept when score(chosen) − score(rejected) (a pairwise scorer, pairRM: its margin of chosen over
rejected) > spec.filter.minMargin and neither side has a repeated n-gram share above spec.filter.maxRepetition
(text.repetition_ratio, n = repetitionNgram); empty or identical sides are dropped. With the similarity scorer
the score is reference-free: cosine to the prompt (relevance). Then pairsPerIteration kept pairs are sampled
(seeded) and appended to the previous iteration's dataset.

Outputs: scored.jsonl (every candidate, with `reason` when dropped), pairs.jsonl (this iteration's sampled
pairs), dataset.jsonl (all pairs so far; a pair — same prompt, chosen and rejected — never counted twice).
"""

from __future__ import annotations

import hashlib
import random

from .. import text
from ..judges import make_scorer, margins
from ._common import rows_or_fail


def pair_id(prompt: str, chosen: str, rejected: str) -> str:
    return hashlib.sha256("\x00".join((prompt, chosen, rejected)).encode()).hexdigest()[:16]


def drop_reason(chosen: str, rejected: str, margin: float, min_margin: float, max_repetition: float,
                ngram: int) -> str | None:
    """Why a candidate pair is dropped, or None when it is kept. Pure."""
    if not chosen.strip() or not rejected.strip():
        return "empty"
    if chosen.strip() == rejected.strip():
        return "identical"
    if text.repetition_ratio(chosen, ngram) > max_repetition or text.repetition_ratio(rejected, ngram) > max_repetition:
        return "repetition"
    if not margin > min_margin:
        return "margin"
    return None


def accumulate(previous: list[dict], new: list[dict]) -> tuple[list[dict], list[dict]]:
    """(dataset, added): previous + the new pairs whose id it does not hold yet, in order. Pure."""
    seen = {p["id"] for p in previous}
    added = []
    for p in new:
        if p["id"] not in seen:
            seen.add(p["id"])
            added.append(p)
    return previous + added, added


def run(ctx) -> dict:
    spec = ctx.spec
    refined = {r["index"]: r for r in rows_or_fail(ctx.input("refined"), "refined", "refined")}
    rejected = {r["index"]: r for r in rows_or_fail(ctx.input("rejected"), "responses", "rejected")}
    previous = (rows_or_fail(ctx.input("previous"), "dataset", "previous")
                if "previous" in ctx.config.get("inputs", {}) else [])
    indices = sorted(set(refined) & set(rejected))
    prompts = [refined[i]["prompt"] for i in indices]
    chosen = [refined[i]["refined"] for i in indices]
    losing = [rejected[i]["response"] for i in indices]
    scorer = make_scorer(spec.filter.scorer.to_api())
    gaps, s_chosen, s_rejected = margins(scorer, prompts, chosen, losing)
    f = spec.filter
    scored = []
    for k, (i, p, c, r, m) in enumerate(zip(indices, prompts, chosen, losing, gaps, strict=True)):
        reason = drop_reason(c, r, m, f.min_margin, f.max_repetition, f.repetition_ngram)
        sides = {"scoreChosen": s_chosen[k], "scoreRejected": s_rejected[k]} if s_chosen is not None else {}
        scored.append({"id": pair_id(p, c, r), "index": i, "iteration": ctx.iteration, "prompt": p, "chosen": c,
                       "rejected": r, **sides, "margin": m, **({"reason": reason} if reason else {})})
    passed = [s for s in scored if "reason" not in s]
    rng = random.Random(ctx.seed("sample"))
    sampled = sorted(rng.sample(passed, min(spec.pairs_per_iteration, len(passed))), key=lambda s: s["index"])
    dataset, added = accumulate(previous, sampled)
    ctx.writer.write_rows("scored", scored)
    ctx.writer.write_rows("pairs", added)
    ctx.writer.write_rows("dataset", dataset)
    reasons: dict[str, int] = {}
    for s in scored:
        if "reason" in s:
            reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
    return {"rows": len(added), "candidates": len(scored), "pairsKept": len(passed), "pairsAdded": len(added),
            "pairsTotal": len(dataset), **{f"dropped{k.capitalize()}": v for k, v in sorted(reasons.items())}}
