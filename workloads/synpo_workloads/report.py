"""`write_report(run_dir)`: per-iteration tables (report.md) and a plot (report.png).

`stage_report(ctx, result)`: the same report, written by a cluster run's evaluate stage next to the run's
artifacts as the stage finishes (so it includes that evaluation), and the result keys that name it.

Reads only the stage manifests under <run_dir>/iter-<t>/<stage>/ (no torch). Iteration 0 is M0 (the baseline
evaluation); iterations 1..T are M_t with their pair counts. Win rates are listed and drawn per opponent
(references, M0), each with n and its 95% interval, never on one line. Comparisons between models are paired
tests on the evaluate stages' per-prompt verdicts (outputs.jsonl), not overlapping intervals (`paired_tests`).
matplotlib runs on the Agg backend.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from synpo_operator.api.evaluation import OPPONENTS, unflatten

from . import store
from .winrate import sign_test

log = logging.getLogger("synpo_workloads")

_ITER = re.compile(r"^iter-(\d+)$")
REPORT = "report.md"
"""The report's name in the run's artifact root (report.png beside it)."""
COLUMNS = ("iteration", "score", "answerTokens", "judgeErrors", "pairsKept", "pairsAdded", "pairsTotal", "trainLoss",
           "rewardAccuracy", "rewardMargin", "heldOutRewardAccuracy", "heldOutRewardMargin", "seconds")
TRAIN_KEYS = ("rewardAccuracy", "rewardMargin", "heldOutRewardAccuracy", "heldOutRewardMargin")
PAIRED_COLUMNS = ("iteration", "comparison", "n", "better / worse / same", "p (exact two-sided sign test)")
WIN_COLUMNS = ("iteration", "against", "n", "win rate [95% CI]", "LC win rate [95% CI]", "position consistency",
               "ties", "position bias")


def _result(stage_dir: str) -> dict[str, Any] | None:
    """A stage's merged result, whether sharded or not; None when not done."""
    try:
        dirs = store.part_dirs(stage_dir)
    except FileNotFoundError:
        return None
    results = []
    for d in dirs:
        m = store.load_manifest(d)
        if m is None:
            return None
        results.append({**(m.get("result") or {}), "_seconds": (m.get("timings") or {}).get("seconds", 0.0)})
    return store.merge_results(results)


def collect(run_dir: str, pending: Mapping[tuple[int, str], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per iteration found under run_dir, from its stage manifests; `pending`: {(iteration, stage):
    result} of stages about to finish (no manifest yet) to include as if done."""
    pending = pending or {}
    rows = []
    iterations = sorted(int(m.group(1)) for n in store._listdir(run_dir) if (m := _ITER.match(n)))
    for t in iterations:
        it_dir = store.join(run_dir, f"iter-{t}")
        row: dict[str, Any] = {"iteration": t}
        seconds = 0.0
        for stage in dict.fromkeys([*store._listdir(it_dir), *(s for i, s in pending if i == t)]):
            res = pending.get((t, stage)) or _result(store.join(it_dir, stage))
            if res is None:
                continue
            seconds += float(res.get("_seconds") or 0.0)
            if stage == "evaluate":
                for key in ("score", "judgeErrors"):
                    if key in res:
                        row[key] = res[key]
                row["comparisons"] = unflatten(res)
                if res.get("generatedPrompts"):
                    row["answerTokens"] = round(res.get("generatedTokens", 0) / res["generatedPrompts"], 1)
                row["outcomes"] = _outcomes(store.join(it_dir, stage), res.get("judge"), (t, stage) in pending)
            elif stage == "pairs":
                for key in ("pairsKept", "pairsAdded", "pairsTotal"):
                    if key in res:
                        row[key] = res[key]
            elif stage == "train":
                row["trainLoss"] = res.get("loss")
                row["model"] = res.get("model")
                row.update({k: res[k] for k in TRAIN_KEYS if k in res})
        row["seconds"] = round(seconds, 1)
        rows.append(row)
    return rows


def _outcomes(stage_dir: str, judge: str | None, pending: bool = False) -> dict[str, dict[int, float]]:
    """The judge's per-prompt preference for the model against each opponent, by eval-row index. A pending
    stage (this process wrote its outputs, its manifest comes next) is read before its manifest lists them."""
    out: dict[str, dict[int, float]] = {}
    rows = store.iter_jsonl(store.join(stage_dir, "outputs.jsonl")) if pending else store.read_rows(stage_dir, "outputs")
    try:
        for r in rows:
            for opponent, p in ((r.get("preferences") or {}).get(judge) or {}).items():
                if p is not None:
                    out.setdefault(opponent, {})[r["index"]] = p
    except FileNotFoundError:
        pass
    return out


def paired_tests(outcomes: dict[int, dict[str, dict[int, float]]]) -> list[dict[str, Any]]:
    """Paired comparisons of the models on the same prompts, one row each: M_t against M0 head to head, and M_t
    against M0 and against M_{t-1} by their verdicts against the references (prompts both were judged on).
    outcomes: iteration -> opponent -> eval-row index -> preference for the model."""
    tests = []
    for t in sorted(outcomes):
        if t == 0:
            continue
        h2h = outcomes[t].get("M0") or {}
        if h2h:
            tests.append({"iteration": t, "comparison": f"M{t} vs M0 head to head (its win rate against M0)",
                          **sign_test([p - 0.5 for p in h2h.values()])})
        mine = outcomes[t].get("references") or {}
        for s in sorted({0, t - 1}):
            theirs = (outcomes.get(s) or {}).get("references") or {}
            common = sorted(set(mine) & set(theirs))
            if common:
                tests.append({"iteration": t, "comparison": f"M{t} vs M{s}, each against the references",
                              **sign_test([mine[i] - theirs[i] for i in common])})
    return tests


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _interval(fig: dict[str, Any], key: str) -> str:
    if fig.get(key) is None:
        reason = fig.get(key + "Reason")
        return f"– ({reason})" if reason else "–"
    low, high = fig.get(key + "Low"), fig.get(key + "High")
    bounds = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{fig[key]:.3f}{bounds}"


def _bias(fig: dict[str, Any]) -> str:
    """The LLM judge's share of verdicts naming the first position, flagged when beyond the threshold."""
    rate = fig.get("firstPositionRate")
    if rate is None:
        return "–"
    return f"{'BIASED: ' if fig.get('positionBiased') else ''}{rate:.0%} first"


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    lines = [f"# {title}", "", "Iteration 0 is the initial model M0; iteration t is M_t (trained on all pairs so "
             "far).", "", "## Win rates (first judge), one opponent per row", "",
             "Compare iterations only within one opponent; intervals are 95% (Wilson for the win rate, bootstrap "
             "for LC). An interval that contains 0.5 is no evidence either way. An LLM judge sees every pair in both "
             "orders: position consistency is the share of pairs whose two verdicts agree, ties the pairs whose "
             "two verdicts named the same position; BIASED marks a judge naming one position beyond the threshold.",
             "",
             "| " + " | ".join(WIN_COLUMNS) + " |", "|" + "---|" * len(WIN_COLUMNS)]
    for opponent in OPPONENTS:
        for row in rows:
            fig = (row.get("comparisons") or {}).get(opponent)
            if fig:
                lines.append(f"| {row['iteration']} | {opponent} | {fig.get('n')} | {_interval(fig, 'winRate')} | "
                             f"{_interval(fig, 'lcWinRate')} | {_fmt(fig.get('positionConsistency'))} | "
                             f"{_fmt(fig.get('ties'))} | {_bias(fig)} |")
    tests = paired_tests({r["iteration"]: r["outcomes"] for r in rows if r.get("outcomes")})
    if tests:
        lines += ["", "## Paired tests (first judge)", "",
                  "Two models compared on the same prompts: better / worse / same count the prompts where the first "
                  "model's verdict beats, trails or equals the second's (head to head: its wins, losses and ties "
                  "against M0). p is the exact two-sided sign test on better against worse (McNemar's exact test "
                  "for win/loss verdicts): the probability of a split at least this uneven if neither model were "
                  "better.", "", "| " + " | ".join(PAIRED_COLUMNS) + " |", "|" + "---|" * len(PAIRED_COLUMNS)]
        for x in tests:
            lines.append(f"| {x['iteration']} | {x['comparison']} | {x['n']} | {x['better']} / {x['worse']} / "
                         f"{x['same']} | {x['pValue']:.3g} |")
    lines += ["", "## Per iteration", "", "rewardAccuracy / rewardMargin: M_t's reward accuracy and mean margin "
              "(chosen − rejected implicit reward, as TRL logs them) on its training pairs (heldOut…: on held-out "
              "pairs). answerTokens: the evaluate stage's mean generated tokens per eval answer.", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["iteration"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    ax = axes[0]
    for opponent, colour in zip(OPPONENTS, ("tab:blue", "tab:orange"), strict=True):
        figs = [(r["iteration"], (r.get("comparisons") or {}).get(opponent) or {}) for r in rows]
        if not any(f.get("winRate") is not None for _, f in figs):
            continue
        for key, marker, style, offset, label in (("winRate", "o", "-", 0.0, f"vs {opponent} (95% CI)"),
                                                  ("lcWinRate", "x", ":", 0.08, f"LC vs {opponent} (95% CI)")):
            x, y, err = _series(figs, key)
            if any(not math.isnan(v) for v in y):
                ax.errorbar([t + offset for t in x], y, yerr=err, marker=marker, linestyle=style, capsize=3,
                            color=colour, label=label)
    ax.axhline(0.5, color="grey", linewidth=0.8)
    ax.set_ylim(0, 1)
    ax.set_title("win rate (first judge), by opponent")
    ax.set_xlabel("iteration (0 = M0)")
    ax.set_xticks(xs)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    for ax, keys, title in ((axes[1], ("score",), "mean score"), (axes[2], ("pairsKept", "pairsTotal"), "pairs")):
        for key in keys:
            ys = [r.get(key) for r in rows]
            ys = [float(y) if isinstance(y, int | float) else math.nan for y in ys]
            if not all(math.isnan(y) for y in ys):
                ax.plot(xs, ys, marker="o", label=key)
        ax.set_title(title)
        ax.set_xlabel("iteration (0 = M0)")
        ax.set_xticks(xs)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _series(figs: list[tuple[int, dict[str, Any]]], key: str):
    """x, y and error bars of one figure over the iterations; NaN where it is null (no evaluation, or LC with a
    reason), so the line breaks there instead of joining its neighbours across it."""
    x, y, low, high = [], [], [], []
    for t, f in figs:
        value = f.get(key)
        x.append(t)
        y.append(float(value) if value is not None else math.nan)
        low.append(value - f.get(key + "Low", value) if value is not None else math.nan)
        high.append(f.get(key + "High", value) - value if value is not None else math.nan)
    return x, y, [low, high]


def write_report(run_dir: str, pending: Mapping[tuple[int, str], dict[str, Any]] | None = None) -> str:
    """Write report.md and report.png into run_dir (local or fsspec); returns the report.md path. `pending`:
    as in `collect`."""
    rows = collect(run_dir, pending)
    title = f"SynPO run {os.path.basename(run_dir.rstrip('/'))}"
    md_path = store.join(run_dir, REPORT)
    png_path = store.join(run_dir, "report.png")
    if store.is_uri(run_dir):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "report.png")
            plot(rows, local)
            with open(local, "rb") as f:
                store.write_bytes_atomic(png_path, f.read())
    else:
        plot(rows, png_path)
    body = markdown(rows, title) + "\n![metrics per iteration](report.png)\n"
    store.write_bytes_atomic(md_path, body.encode("utf-8"))
    return md_path


def stage_report(ctx, result: dict[str, Any]) -> dict[str, Any]:
    """The run's report, written by a stage about to finish (ctx: its StageContext; result: its result) into the
    run's artifact root with that stage's result in it. Returns the result with a key naming it: `report`, the
    path relative to the artifact root (the operator shows the full URI as status.report), or `reportError` when
    it could not be written — a plot that fails never fails the evaluation it describes."""
    run_dir = ctx.config.get("runRoot")
    if not run_dir:
        return result
    seconds = round(time.time() - ctx.writer.started, 1)
    try:
        write_report(run_dir, {(ctx.iteration, ctx.stage): {**result, "_seconds": seconds}})
    except Exception as err:  # noqa: BLE001 - reported in the result, the stage's own outputs stand
        log.warning("the run report could not be written to %s: %s", run_dir, err)
        return {**result, "reportError": f"{type(err).__name__}: {err}"[:300]}
    return {**result, "report": REPORT}
