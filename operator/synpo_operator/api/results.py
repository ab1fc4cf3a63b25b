"""The stage-result contract between the stage programs (synpo_workloads) and the operator.

A stage ends by emitting one small JSON object (the container's termination message; the manifest's
`result`): these keys, camelCase, scalar values. Both packages import this module (it needs nothing but the
standard library), so a key is spelled once. Adding a key: one line in `StageResult` (and one in `SUMMED` when
shards add up rather than average).
"""

from __future__ import annotations

import json
from typing import Any, TypedDict

BAD_INPUT_EXIT_CODE = 2
"""Stage programs exit with 2 on bad input data or config: retrying cannot help (Jobs fail fast on it too)."""


class StageResult(TypedDict, total=False):
    """Keys the operator reads (stages may add others: they are kept in status, never interpreted)."""

    rows: int
    """Rows written."""
    seconds: float
    """Wall time of the stage (per shard; shards add up: GPU time is additive)."""
    pairsKept: int
    """pairs: pairs that passed the filters this iteration."""
    pairsTotal: int
    """pairs: pairs in the accumulated dataset."""
    winRate: float
    """evaluate: headline win rate (first judge)."""
    lcWinRate: float
    """evaluate: length-controlled win rate."""
    score: float
    """evaluate: mean judge score."""
    against: str
    """evaluate: the headline figures' opponent (references | M0); every opponent's figures are also under
    `vs<Opponent><Key>` keys (api/evaluation.py)."""
    n: int
    """evaluate: comparisons behind the headline win rate."""
    winRateLow: float
    winRateHigh: float
    """evaluate: the headline win rate's 95% Wilson interval."""
    lcWinRateLow: float
    lcWinRateHigh: float
    """evaluate: the LC win rate's 95% bootstrap interval."""
    lcWinRateReason: str
    """evaluate: why lcWinRate is absent (not a measurement)."""
    report: str
    """evaluate: the run's report (report.md, report.png beside it), written as the stage finished, as a path
    relative to the run's artifact root; the run's status.report is its full URI."""
    reportError: str
    """evaluate: why the report could not be written (the evaluation itself stands)."""
    judgeErrors: int
    judgeCalls: int
    """evaluate: failed LLM-judge calls (errors, no verdict, text and log-probabilities disagreeing), and all
    calls (two per pair: both orders)."""
    positionConsistency: float
    ties: int
    firstPositionRate: float
    positionBiased: bool
    """evaluate, LLM judge: share of pairs whose two orders named the same answer, pairs whose two verdicts named
    the same position, share of verdicts naming the first position, and whether that share is beyond the bias
    threshold (a judge to distrust)."""
    rewardAccuracy: float
    rewardMargin: float
    """train: the trained model's reward accuracy (share of pairs whose chosen answer gets the higher implicit
    reward) and mean reward margin (chosen − rejected) on its training pairs, as TRL logs them."""
    heldOutRewardAccuracy: float
    heldOutRewardMargin: float
    """train: the same on held-out pairs, when there are any."""
    model: str
    """Model-producing stages: where the model was saved."""
    generatedPrompts: int
    generatedTokens: int
    """Generating stages: prompts answered and tokens generated (exact counts)."""
    generationSeconds: float
    """Generating stages: time inside the engine's generate calls (shards add up)."""
    tokensPerSecond: float
    """Generating stages: generatedTokens / generationSeconds; shards run side by side, so the stage's
    throughput is the sum of theirs."""
    error: str
    """Failed stages: the one-line reason."""
    exitCode: int
    """Failed stages: the exit code."""


ROWS, SECONDS, PAIRS_KEPT, PAIRS_TOTAL = "rows", "seconds", "pairsKept", "pairsTotal"
WIN_RATE, LC_WIN_RATE, SCORE, MODEL, ERROR, EXIT_CODE = (
    "winRate", "lcWinRate", "score", "model", "error", "exitCode")


def number(value: Any, integer: bool = False) -> int | float | None:
    """A result value as a number (None when absent, boolean or not numeric)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value) if integer else float(value)
    except (TypeError, ValueError):
        return None


GENERATION = ("generatedPrompts", "generatedTokens", "generationSeconds", "tokensPerSecond")
"""The generation figures, in StageResult's order."""
SUMMED = frozenset({SECONDS, GENERATION[2], GENERATION[3]})
"""Float keys that shards add up (time and the throughput of shards running side by side); other floats are
averaged, integers always summed."""
SCALAR = (int, float, str, bool)


def merge_results(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One summary from the shards of a stage: integers and `SUMMED` keys summed, other numbers averaged,
    anything else taken from the first shard that has it; `shards` says how many were merged."""
    results = [r for r in results if r]
    if not results:
        return None
    if len(results) == 1:
        return dict(results[0])
    merged: dict[str, Any] = {}
    for key in dict.fromkeys(k for r in results for k in r):
        values = [r[key] for r in results if key in r]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if numeric and (key in SUMMED or all(isinstance(v, int) for v in values)):
            merged[key] = sum(values)
        elif numeric:
            merged[key] = sum(values) / len(values)
        else:
            merged[key] = values[0]
    merged["shards"] = len(results)
    return merged


def parse_summary(message: str | None) -> dict[str, Any] | None:
    """A stage's result from its termination message; scalar values only (None when not JSON).
    FallbackToLogsOnError may put log lines around it: then the last line that parses counts."""
    if not message:
        return None
    text = message.strip()
    start = text.find("{")
    if start < 0:
        return None
    try:
        doc = json.loads(text[start:])
    except ValueError:
        for line in reversed(text.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    doc = json.loads(line)
                    break
                except ValueError:
                    continue
        else:
            return None
    if not isinstance(doc, dict):
        return None
    return {str(k): v for k, v in doc.items() if isinstance(v, SCALAR)}
