"""evaluate: the policy answers the held-out prompts; every judge in spec.evaluation.judges scores them.

Per judge:
- score: mean pointwise score (similarity: cosine to the reference when the row has one, else to the prompt;
  rewardModel: the reward) — for the openai judge, its mean preference.
- winRate / lcWinRate: against the baseline M0 outputs (inputs.baseline, the iteration-0 evaluation) when
  there is one, otherwise against the eval file's reference answers (rows without one are skipped). Pointwise
  judges prefer the higher reference-free score (similarity to the prompt, reward); the openai judge compares
  the two answers directly. lcWinRate: AlpacaEval 2.0's length-controlled win rate (winrate.lc_win_rate,
  lengths in characters).
Outputs: outputs.jsonl (per prompt: output, scores and preferences per judge), metrics.json. The summary
carries the first judge's numbers.
"""

from __future__ import annotations

from .. import data_io, templates
from ..judges import make_scorer
from ..winrate import lc_win_rate, preference_from_scores, win_rate
from ._common import engine, rows_or_fail, sampling


def judge_names(judges: list[dict]) -> list[str]:
    names, seen = [], {}
    for j in judges:
        t = j.get("type", "similarity")
        seen[t] = seen.get(t, 0) + 1
        names.append(t if seen[t] == 1 else f"{t}{seen[t]}")
    return names


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 6) if xs else None


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

    against = "baseline" if baseline else "reference"
    others = [baseline.get(i) for i in range(len(rows))] if baseline else refs
    pick = [i for i, o in enumerate(others) if o]
    judges = [j.to_api() for j in spec.evaluation.judges]
    per_row: list[dict] = [{"index": i, "prompt": p, "output": o, **({"reference": r} if r else {}),
                            "scores": {}, "preferences": {}}
                           for i, (p, o, r) in enumerate(zip(prompts, outputs, refs, strict=True))]
    metrics = []
    for name, judge in zip(judge_names(judges), judges, strict=True):
        prefs: list[float] = []
        if judge.get("type") == "openai":
            from ..judges.openai_judge import OpenAIJudge

            j = OpenAIJudge(judge["endpoint"], judge["model"], seed=spec.random_seed)
            prefs = j.prefer([prompts[i] for i in pick], [outputs[i] for i in pick], [others[i] for i in pick])
            scores = prefs
            extra = {"errors": j.errors}
        else:
            scorer = make_scorer(judge, field="spec.evaluation.judges")
            scores = scorer.score(prompts, outputs, refs)
            extra = {}
            if pick:
                mine = scorer.score([prompts[i] for i in pick], [outputs[i] for i in pick])
                theirs = scorer.score([prompts[i] for i in pick], [others[i] for i in pick])
                prefs = [preference_from_scores(a, b) for a, b in zip(mine, theirs, strict=True)]
        for i, s in zip(range(len(rows)) if len(scores) == len(rows) else pick, scores, strict=True):
            per_row[i]["scores"][name] = s
        for i, p in zip(pick, prefs, strict=False):
            per_row[i]["preferences"][name] = p
        m = {"judge": name, "type": judge.get("type"), "against": against, "n": len(prefs),
             "score": _mean(list(scores)), **extra}
        if prefs:
            m["winRate"] = round(win_rate(prefs), 6)
            m["lcWinRate"] = round(lc_win_rate(prefs, [len(outputs[i]) for i in pick],
                                               [len(others[i]) for i in pick]), 6)
        metrics.append(m)
    ctx.writer.write_rows("outputs", per_row)
    ctx.writer.write_json("metrics.json", {"iteration": ctx.iteration, "model": ctx.model("policy"),
                                           "prompts": len(rows), "judges": metrics})
    head = metrics[0]
    return {"rows": len(rows), "judge": head["judge"], "against": against,
            **{k: head[k] for k in ("winRate", "lcWinRate", "score") if head.get(k) is not None},
            "model": ctx.model("policy"), **eng.result()}
