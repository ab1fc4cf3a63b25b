"""Win rates: Wilson intervals, and the LC win rate as AlpacaEval 2.0 fits it (null, with a reason, where it
would be an extrapolation). The worked examples' expected values come from alpaca_eval's own
fit_LogisticRegressionCV run on the same synthetic annotations (bench/lc_crosscheck.py)."""

from __future__ import annotations

import importlib.util
import math
import random
from pathlib import Path

import pytest

from synpo_workloads.winrate import (
    figure,
    is_extreme_change,
    lc_win_rate,
    length_features,
    sign_test,
    wilson_interval,
)

pytestmark = pytest.mark.workloads
ROOT = Path(__file__).resolve().parents[2]


def _load_crosscheck():
    """bench/lc_crosscheck.py: its generator made the annotations alpaca_eval's fit was run on (one copy)."""
    spec = importlib.util.spec_from_file_location("lc_crosscheck", ROOT / "bench" / "lc_crosscheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


synthetic = _load_crosscheck().synthetic


@pytest.mark.parametrize("trial,n,lw,mw,expected", [
    (1, 80, 2.0, -0.5, 0.3062), (2, 60, 0.5, 0.8, 0.6036), (3, 100, 3.0, 0.0, 0.5245), (4, 30, 1.0, 0.2, 0.5975)])
def test_lc_matches_alpaca_evals_fit(trial, n, lw, mw, expected):
    prefs, ml, ol, _ = synthetic(trial, n, lw, mw)
    lc = lc_win_rate(prefs, ml, ol)
    assert lc.value == pytest.approx(expected, abs=1e-4)
    assert lc.low <= lc.value <= lc.high


def test_length_bias_is_removed():
    """A judge that only rewards length: raw win rate far from 0.5, LC back near 0.5."""
    r = random.Random(5)
    ml = [r.randint(100, 900) for _ in range(200)]
    ol = [r.randint(100, 900) for _ in range(200)]
    feat = length_features(ml, ol)
    prefs = [1.0 if r.random() < 1 / (1 + math.exp(-3 * f)) else 0.0 for f in feat]
    lc = lc_win_rate(prefs, ml, ol)
    assert abs(lc.value - 0.5) < 0.08 and lc.length_weight > 1


def test_degenerate_inputs_give_no_lc_but_a_reason():
    assert lc_win_rate([1.0, 0.0] * 8, [100] * 16, [50] * 16).reason.startswith("the length difference does not vary")
    separated = lc_win_rate([1.0] * 8 + [0.0] * 8, [500] * 8 + [100] * 8, [200] * 16)
    assert separated.value is None and "separates" in separated.reason
    assert "too few" in lc_win_rate([1.0, 0.0, 1.0], [1, 2, 3], [3, 2, 1]).reason
    assert "one way" in lc_win_rate([1.0] * 12, list(range(12)), [5] * 12).reason


def test_extreme_change_rule_is_alpaca_evals():
    # AlpacaEval's docstring example: raw 20% warns below 10% or above 40%; raw 50% below 37.5% or above 62.5%.
    assert is_extreme_change(0.20, 0.09) and not is_extreme_change(0.20, 0.11)
    assert is_extreme_change(0.20, 0.41) and not is_extreme_change(0.20, 0.39)
    assert is_extreme_change(0.5, 0.37) and not is_extreme_change(0.5, 0.38)


def test_wilson_interval_and_figure():
    low, high = wilson_interval(0.5, 16)
    assert low == pytest.approx(0.2800, abs=1e-3) and high == pytest.approx(0.7200, abs=1e-3)
    fig = figure([1.0, None, 0.0, 1.0], [10, 20, 30, 40], [20, 20, 20, 20])
    assert fig["n"] == 3 and fig["winRate"] == pytest.approx(2 / 3) and "too few" in fig["lcWinRateReason"]


def test_a_fit_with_every_weight_zero_is_no_measurement():
    """Cross-validation at the smallest C zeroes every weight: LC would be sigmoid(0) = 0.5 whatever the
    verdicts (alpaca_eval reports that 0.5); here it is None with the reason."""
    prefs, ml, ol, _ = synthetic(5, 60, 0.0, 0.3)
    lc = lc_win_rate(prefs, ml, ol)
    assert lc.value is None and "every weight to zero" in lc.reason
    ties = lc_win_rate([0.5] * 12, list(range(12)), [5] * 12)  # a judge that calls every pair a tie
    assert ties.value is None and "every weight to zero" in ties.reason
    assert "lcWinRate" not in figure([0.5] * 12, list(range(12)), [5] * 12)


def test_weights_that_grow_beyond_the_grid_are_no_measurement():
    import numpy as np

    from synpo_workloads.winrate import C_GRID, _degenerate, _fit

    feature = np.linspace(-1, 1, 20)
    x = np.column_stack([feature, np.ones(20)])
    separable = (feature > 0).astype(float)  # length alone decides: the unpenalised weights diverge
    assert "still grow" in _degenerate(x, separable, C_GRID[-1], _fit(x, separable, C_GRID[-1]))
    prefs, ml, ol, _ = synthetic(1, 80, 2.0, -0.5)  # C at the upper edge, but the fit has converged there
    assert lc_win_rate(prefs, ml, ol).value == pytest.approx(0.3062, abs=1e-4)


def test_the_interval_bootstraps_the_same_estimator():
    """The interval is centred on the CV-chosen (penalised) fit it brackets, not on another, unpenalised one
    (which put this 0.555 near the low end of [0.529, 0.847])."""
    prefs, ml, ol, _ = synthetic(7, 40, 0.3, 0.3)
    lc = lc_win_rate(prefs, ml, ol)
    assert lc.value == pytest.approx(0.5554, abs=1e-4)
    assert abs((lc.low + lc.high) / 2 - lc.value) < 0.05 and lc.high < 0.75


def test_sign_test_is_the_exact_binomial_test():
    """Hand-worked p-values, then scipy's exact binomial test over every split up to 30 discordant prompts."""
    assert sign_test([1, 1, 1, 1, 1]) == {"n": 5, "better": 5, "worse": 0, "same": 0, "pValue": 0.0625}
    assert sign_test([0.5] + [-0.5] * 9 + [0.0] * 3)["pValue"] == pytest.approx(2 * 11 / 1024)  # 1 of 10
    assert sign_test([0.0, 0.0]) == {"n": 2, "better": 0, "worse": 0, "same": 2, "pValue": 1.0}
    assert sign_test([1, -1, 0.25, -0.25])["pValue"] == 1.0
    binomtest = pytest.importorskip("scipy.stats").binomtest
    for m in range(1, 31):
        for k in range(m + 1):
            p = sign_test([1.0] * k + [-1.0] * (m - k))["pValue"]
            assert p == pytest.approx(binomtest(k, m, 0.5).pvalue, rel=1e-9), (k, m)


def test_a_paired_test_finds_what_overlapping_intervals_miss():
    """45 of 60 against 35 of 60 (0.750 vs 0.583): the Wilson intervals overlap, yet with the 10 changed
    prompts all one way the paired test is significant; the same totals with changes both ways are not."""
    a = [1.0] * 45 + [0.0] * 15
    one_way = [1.0] * 35 + [0.0] * 25
    lo_a, _ = wilson_interval(0.75, 60)
    _, hi_b = wilson_interval(35 / 60, 60)
    assert lo_a < hi_b
    assert sign_test([x - y for x, y in zip(a, one_way, strict=True)])["pValue"] < 0.01
    both_ways = [0.0] * 20 + [1.0] * 35 + [0.0] * 5  # 20 prompts changed one way, 10 the other
    assert sum(both_ways) == 35
    split = sign_test([x - y for x, y in zip(a, both_ways, strict=True)])
    assert (split["better"], split["worse"]) == (20, 10) and split["pValue"] > 0.05
