"""The report's tables and plot series from per-iteration rows (report.collect's shape)."""

from __future__ import annotations

import math

import pytest

from synpo_workloads import report

pytestmark = pytest.mark.workloads

ROWS = [
    {"iteration": 0, "comparisons": {"references": {"n": 20, "winRate": 0.4, "winRateLow": 0.2, "winRateHigh": 0.6,
                                                    "lcWinRate": 0.45, "lcWinRateLow": 0.3, "lcWinRateHigh": 0.6}}},
    {"iteration": 1, "rewardAccuracy": 0.75, "rewardMargin": -0.31, "trainLoss": 1.4,
     "comparisons": {"references": {"n": 20, "winRate": 0.5, "winRateLow": 0.3, "winRateHigh": 0.7,
                                    "lcWinRateReason": "cross-validation chose C = 0.0001 …",
                                    "positionConsistency": 0.6, "ties": 8, "firstPositionRate": 0.7,
                                    "positionBiased": True}}},
    {"iteration": 2, "rewardAccuracy": 0.9, "rewardMargin": 0.52,
     "comparisons": {"references": {"n": 20, "winRate": 0.6, "winRateLow": 0.4, "winRateHigh": 0.8,
                                    "lcWinRate": 0.55, "lcWinRateLow": 0.4, "lcWinRateHigh": 0.7,
                                    "positionConsistency": 0.95, "ties": 1, "firstPositionRate": 0.525,
                                    "positionBiased": False}}},
]


def test_lc_series_breaks_at_a_null_and_carries_its_intervals():
    figs = [(r["iteration"], r["comparisons"]["references"]) for r in ROWS]
    x, y, (low, high) = report._series(figs, "lcWinRate")
    assert x == [0, 1, 2] and y[0] == 0.45 and math.isnan(y[1]) and y[2] == 0.55  # NaN: no line through it
    assert low[0] == pytest.approx(0.15) and high[2] == pytest.approx(0.15) and math.isnan(low[1])


def test_markdown_shows_position_figures_and_reward_accuracy(tmp_path):
    md = report.markdown(ROWS, "t")
    assert "| 1 | references | 20 | 0.500 [0.300, 0.700] | – (cross-validation chose C" in md
    assert "| 0.6 | 8 | BIASED: 70% first |" in md and "| 0.95 | 1 | 52% first |" in md
    assert "| 1 | – | – | – | – | – | 1.4 | 0.75 | -0.31 | – | – |" in md
    report.plot(ROWS, str(tmp_path / "r.png"))
    assert (tmp_path / "r.png").stat().st_size > 1000
