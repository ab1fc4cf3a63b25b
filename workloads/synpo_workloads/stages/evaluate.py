"""evaluate: the policy answers the held-out prompts; every judge in spec.evaluation.judges scores them.

Opponents are never mixed: M_t is compared with each opponent separately, and every figure names its opponent.
- references: the eval file's reference answers (rows without one are skipped), in every evaluation.
- M0: M0's answers (inputs.baseline, the iteration-0 evaluation), for t ≥ 1 when the baseline is evaluated.
Per judge and opponent: n, winRate with a 95% Wilson interval, lcWinRate (AlpacaEval 2.0's length-controlled
win rate, winrate.lc_win_rate; lengths in characters) with a bootstrap interval, or lcWinRateReason when LC would
not be a measurement. Pointwise judges prefer the higher reference-free score (similarity to the prompt,
reward); the openai judge compares the two answers directly, in both orders (judges/openai_judge.py), and adds
per opponent positionConsistency, ties, firstPositionRate and positionBiased (the first position named beyond
openai_judge.POSITION_BIAS_THRESHOLD). score: the mean pointwise score of pointwise judges (similarity: cosine to
the reference when the row has one, else to the prompt; rewardModel: the reward); an openai judge has none (its
preferences belong to one opponent each).
An openai judge's failed calls (errors after retries, replies without a verdict, text and log-probabilities that
disagree) leave their pair out of its win rates and are counted (judgeErrors of judgeCalls, two calls per pair);
more than spec.evaluation.maxJudgeErrorRate of them fails the stage.
Outputs: outputs.jsonl (per prompt: output, scores and preferences per judge and opponent), metrics.json.
The result carries the first judge's figures: the headline (`against`: M0 when there is a baseline, else
references) as winRate, lcWinRate, n, …, and every opponent's as vs<Opponent><Key> (vsM0WinRate, vsReferencesN, …).
"""

from __future__ import annotations

import logging

from synpo_operator.api.evaluation import flatten

from .. import data_io, templates
from ..judges import make_scorer
from ..judges.openai_judge import JudgeError
from ..report import stage_report
from ..winrate import figure, preference_from_scores
from ._common import engine, rows_or_fail, sampling

log = logging.getLogger(__name__)


def judge_names(judges: list[dict]) -> list[str]:
    names, seen = [], {}
    for j in judges:
        t = j.get("type", "similarity")
        seen[t] = seen.get(t, 0) + 1
        names.append(t if seen[t] == 1 else f"{t}{seen[t]}")
    return names


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 6) if xs else None


def _pairwise(name, judge, spec, prompts, outputs, refs, opponents, per_row) -> dict:
    """An openai judge against each opponent; fails the stage above maxJudgeErrorRate failed comparisons."""
    from ..judges.openai_judge import OpenAIJudge

    m: dict = {"judge": name, "type": judge.get("type"), "comparisons": {}, "errors": 0, "calls": 0}
    j = OpenAIJudge(judge["endpoint"], judge["model"])
    for opponent, others in opponents.items():
        pick = [i for i, o in enumerate(others) if o]
        v = j.prefer([prompts[i] for i in pick], [outputs[i] for i in pick], [others[i] for i in pick])
        m["errors"] += v.failed
        m["calls"] += v.calls
        position = v.position_figures()
        m["comparisons"][opponent] = {
            **figure(v.preferences, [len(outputs[i]) for i in pick], [len(others[i]) for i in pick],
                     seed=spec.random_seed), **position,
            "errors": v.errors, "unparsed": v.unparsed, "disagreed": v.disagreed, "weighted": v.weighted,
            "calls": v.calls}
        if position.get("positionBiased"):
            log.warning("openai judge %s vs %s: position-biased (names the first answer in %.0f%% of its verdicts)",
                        name, opponent, 100 * position["firstPositionRate"])
        for i, p in zip(pick, v.preferences, strict=True):
            per_row[i]["preferences"].setdefault(name, {})[opponent] = p
        m.setdefault("errorSamples", []).extend(v.messages)
    limit = spec.evaluation.max_judge_error_rate
    if m["calls"] and m["errors"] / m["calls"] > limit:
        raise JudgeError(f"openai judge at {judge['endpoint']} (model {judge['model']}): {m['errors']} of "
                         f"{m['calls']} comparisons failed (> spec.evaluation.maxJudgeErrorRate {limit}); "
                         f"e.g. {'; '.join(m['errorSamples'][:2])}")
    return m


def _pointwise(name, judge, spec, prompts, outputs, refs, opponents, per_row) -> dict:
    """A pointwise scorer: its mean score, and per opponent the preference for the higher reference-free score."""
    m: dict = {"judge": name, "type": judge.get("type"), "comparisons": {}}
    scorer = make_scorer(judge, field="spec.evaluation.judges")
    scores = scorer.score(prompts, outputs, refs)
    for i, s in enumerate(scores):
        per_row[i]["scores"][name] = s
    m["score"] = _mean(list(scores))
    mine = scorer.score(prompts, outputs) if opponents else []  # reference-free: one scale for both sides
    for opponent, others in opponents.items():
        pick = [i for i, o in enumerate(others) if o]
        theirs = scorer.score([prompts[i] for i in pick], [others[i] for i in pick])
        prefs = [preference_from_scores(mine[i], t) for i, t in zip(pick, theirs, strict=True)]
        m["comparisons"][opponent] = figure(prefs, [len(outputs[i]) for i in pick], [len(others[i]) for i in pick],
                                            seed=spec.random_seed)
        for i, p in zip(pick, prefs, strict=True):
            per_row[i]["preferences"].setdefault(name, {})[opponent] = p
    return m


def run(ctx) -> dict:
    spec = ctx.spec
    rows = data_io.read_jsonl(ctx.data("eval"), "eval")
    if spec.evaluation.max_prompts:
        rows = rows[: spec.evaluation.max_prompts]
    prompts = [r["prompt"] for r in rows]
    refs = [r.get("reference") if isinstance(r.get("reference"), str) and r.get("reference") else None for r in rows]

    baseline: dict[int, str] = {}
    if "baseline" in ctx.config.get("inputs", {}):
        baseline = {r["index"]: r["output"] for r in rows_or_fail(ctx.input("baseline"), "outputs", "baseline")}
    eng = engine(ctx, ctx.model("policy"))
    try:
        # A fixed seed (not the stage's) so M0 and every M_t sample under the same seed.
        outputs = eng.generate([templates.policy_prompt(p) for p in prompts], sampling(ctx, seed=spec.random_seed))
    finally:
        eng.close()

    opponents: dict[str, list[str | None]] = {}
    if any(refs):
        opponents["references"] = refs
    if baseline:
        opponents["M0"] = [baseline.get(i) for i in range(len(rows))]
    headline = "M0" if "M0" in opponents else ("references" if opponents else None)

    judges = [j.to_api() for j in spec.evaluation.judges]
    per_row: list[dict] = [{"index": i, "prompt": p, "output": o, **({"reference": r} if r else {}),
                            "scores": {}, "preferences": {}}
                           for i, (p, o, r) in enumerate(zip(prompts, outputs, refs, strict=True))]
    metrics = []
    for name, judge in zip(judge_names(judges), judges, strict=True):
        compare = _pairwise if judge.get("type") == "openai" else _pointwise
        metrics.append(compare(name, judge, spec, prompts, outputs, refs, opponents, per_row))
    judge_errors = sum(m.get("errors", 0) for m in metrics)
    judge_calls = sum(m.get("calls", 0) for m in metrics)
    ctx.writer.write_rows("outputs", per_row)
    ctx.writer.write_json("metrics.json", {"iteration": ctx.iteration, "model": ctx.model("policy"),
                                           "prompts": len(rows), "headline": headline, "judgeErrors": judge_errors,
                                           "judgeCalls": judge_calls, "judges": metrics})
    head = metrics[0]
    return stage_report(ctx, {"rows": len(rows), "judge": head["judge"], **flatten(head["comparisons"], headline),
            **({"score": head["score"]} if head.get("score") is not None else {}),
            **({"judgeErrors": judge_errors, "judgeCalls": judge_calls} if judge_calls else {}),
            "model": ctx.model("policy"), **eng.result()})  # the run's report, with this evaluation
