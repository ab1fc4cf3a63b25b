"""Win rates with their uncertainty: raw (with a Wilson interval) and length-controlled as AlpacaEval 2.0 fits it.

AlpacaEval 2.0 (alpaca_eval/metrics/glm_winrate.py, GLM "length_controlled_v1") fits a logistic GLM of the
judge's (soft) preference on three features — tanh(Δlen / sd(Δlen)), the instruction's difficulty and a
model-vs-baseline term — with an L1 penalty chosen by 5-fold cross-validation (grouped by instruction, soft
log loss), no free intercept, and soft labels fitted as two weighted rows per annotation. The LC win rate is the
mean prediction with the length feature set to 0. What this module does the same: the length feature (characters,
sd with ddof=1), the soft-label fit, the L1 path over 10 C values on a log grid 1e-4..1e4 chosen by 5-fold grouped
CV on soft log loss, no free intercept, and AlpacaEval's "extreme change" warning thresholds (bench/lc_crosscheck.py
runs alpaca_eval's own fit on synthetic annotations beside this one: identical to 4 decimals).
What differs, and why:
- No instruction-difficulty term: AlpacaEval estimates it from many models' annotations on its 805 fixed
  instructions; a custom eval set has one model and one opponent, so the per-instruction term is not identifiable.
  With it gone every prompt gets the same prediction, so the LC win rate is sigmoid(model-vs-opponent weight).
- No regularisation towards AlpacaEval's "gamed" baselines (regularize_to_baseline_lambda = 0.2): those are
  AlpacaEval's own annotations of length-gamed models on its instructions, which do not exist for a custom set.
- Where AlpacaEval only logs a warning (LC far from raw), or would extrapolate (no length variation, length alone
  separating the verdicts, too few comparisons for 5 folds, all verdicts one way), LC is None with the reason.
- A degenerate fit gives None with the reason (`_degenerate`): every weight zero (LC = sigmoid(0) = 0.5 by
  construction) or the chosen C at the grid's edge with the optimum possibly beyond it.
- The interval is a percentile bootstrap over prompts of the same estimator (the fit at the CV-chosen C),
  widened to contain the estimate (AlpacaEval's lc_standard_error is the standard error of the per-prompt
  predictions, 0 without the instruction term).
Pure numpy/scikit-learn; no I/O.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054
MIN_LC_N = 10
"""Fewest comparisons for an LC fit: 5 cross-validation folds of at least 2 prompts."""
C_GRID = tuple(10.0 ** e for e in (-4 + 8 * i / 9 for i in range(10)))
"""LogisticRegressionCV's default grid (Cs=10): 10 values log-spaced over 1e-4..1e4."""
N_SPLITS = 5
BOOTSTRAP = 200


def win_rate(preferences: Sequence[float]) -> float:
    """Mean preference for the model (1 win, 0 loss, 0.5 tie, or a probability)."""
    return sum(preferences) / len(preferences) if preferences else float("nan")


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion p over n comparisons (soft preferences: p is their mean, which
    makes the interval slightly conservative when there are ties)."""
    if n <= 0:
        return (0.0, 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def preference_from_scores(model: float, other: float, tie: float = 1e-9) -> float:
    if abs(model - other) <= tie:
        return 0.5
    return 1.0 if model > other else 0.0


def sign_test(differences: Sequence[float], tie: float = 1e-9) -> dict:
    """Exact two-sided sign test on paired per-prompt differences (> 0: the first side better on that prompt,
    < 0: worse, 0: the same, left out). On win/loss outcomes of two models against one opponent it is McNemar's
    exact test; on head-to-head preferences minus 0.5 it is the sign test of wins against losses.
    pValue: the probability, were better and worse equally likely, of a split at least this uneven."""
    better = sum(1 for d in differences if d > tie)
    worse = sum(1 for d in differences if d < -tie)
    m = better + worse
    tail = sum(math.comb(m, i) for i in range(min(better, worse) + 1)) / 2 ** m
    return {"n": len(differences), "better": better, "worse": worse, "same": len(differences) - m,
            "pValue": min(1.0, 2 * tail)}


def length_features(model_lengths: Sequence[int], other_lengths: Sequence[int]) -> list[float]:
    """tanh of the length difference over its sample standard deviation (ddof=1, as pandas' .std()); all 0
    when the difference does not vary."""
    diffs = [float(a - b) for a, b in zip(model_lengths, other_lengths, strict=True)]
    if len(diffs) < 2:
        return [0.0] * len(diffs)
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    return [math.tanh(d / sd) if sd > 0 else 0.0 for d in diffs]


def is_extreme_change(raw: float, lc: float, abs_diff: float = 0.10, rel_diff: float = 4.0) -> bool:
    """AlpacaEval's warning rule (get_is_extreme_changes, on a 0-1 scale): LC below min(raw − raw/4, raw − 0.1)
    or above max(raw + (1 − raw)/4, raw + 0.1)."""
    too_small = lc < min(raw - raw / rel_diff, raw - abs_diff)
    too_large = lc > max(raw + (1 - raw) / rel_diff, raw + abs_diff)
    return too_small or too_large


@dataclass(frozen=True)
class LengthControlled:
    value: float | None
    """The LC win rate, or None when it would not be a measurement (see `reason`)."""
    reason: str | None = None
    """Why value is None."""
    low: float | None = None
    high: float | None = None
    """95% bootstrap interval."""
    length_weight: float | None = None
    """Fitted weight of the length feature (positive: the judge favours the longer answer)."""


def _fit(x, p, c: float):
    """L1 logistic fit of soft labels p on features x (no free intercept: x holds a constant column)."""
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    n = len(p)
    xs = np.vstack([x, x])
    ys = np.concatenate([np.ones(n), np.zeros(n)])
    ws = np.concatenate([p, 1.0 - p])
    keep = ws > 0
    if len(set(ys[keep].tolist())) < 2:  # one class only: the duplicated-row trick needs both
        ws = np.where(keep, ws, 1e-12)
        keep = ws > 0
    with warnings.catch_warnings():  # near-separable resamples at large C: liblinear stops at max_iter, fine
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=c, l1_ratio=1.0, solver="liblinear", fit_intercept=False, random_state=123
                                  ).fit(xs[keep], ys[keep], sample_weight=ws[keep])


def _soft_log_loss(fit, x, p) -> float:
    import numpy as np

    q = np.clip(fit.predict_proba(x)[:, 1], 1e-15, 1 - 1e-15)
    return float(-np.mean(p * np.log(q) + (1 - p) * np.log(1 - q)))


def _choose_c(x, p) -> float:
    """The C with the lowest mean held-out soft log loss over N_SPLITS folds of prompts (prompt i in fold
    i mod N_SPLITS: how scikit-learn's GroupKFold, which AlpacaEval uses, splits equal-sized groups)."""
    import numpy as np

    n = len(p)
    folds = [np.arange(k, n, N_SPLITS) for k in range(N_SPLITS)]
    best, best_loss = C_GRID[0], math.inf
    for c in C_GRID:
        losses = []
        for test in folds:
            train = np.setdiff1d(np.arange(n), test)
            losses.append(_soft_log_loss(_fit(x[train], p[train], c), x[test], p[test]))
        loss = float(np.mean(losses))
        if loss < best_loss - 1e-12:
            best, best_loss = c, loss
    return best


def _separates(feature, p) -> bool:
    """The length feature alone orders every decided verdict: all wins longer (or shorter) than all losses."""
    wins = [f for f, q in zip(feature, p, strict=True) if q > 0.5]
    losses = [f for f, q in zip(feature, p, strict=True) if q < 0.5]
    if not wins or not losses:
        return False
    return min(wins) > max(losses) or max(wins) < min(losses)


def lc_win_rate(preferences: Sequence[float], model_lengths: Sequence[int], other_lengths: Sequence[int],
                seed: int = 0) -> LengthControlled:
    """Length-controlled win rate of the model against one opponent, with a 95% bootstrap interval."""
    import numpy as np

    n = len(preferences)
    p = np.clip(np.asarray(preferences, dtype=float), 0.0, 1.0)
    feature = np.asarray(length_features(model_lengths, other_lengths))
    if n < MIN_LC_N:
        return LengthControlled(None, f"too few comparisons for the length model (n={n} < {MIN_LC_N})")
    if np.all(feature == 0.0):
        return LengthControlled(None, "the length difference does not vary: the length term is undefined")
    if np.all(p >= 1.0) or np.all(p <= 0.0):
        return LengthControlled(None, "every verdict went one way: the length model is undefined")
    if _separates(feature, p):
        return LengthControlled(None, "length alone separates the verdicts: a length-free win rate would be an "
                                      "extrapolation")
    x = np.column_stack([feature, np.ones(n)])
    c = _choose_c(x, p)
    fit = _fit(x, p, c)
    length_w, model_w = (float(w) for w in fit.coef_[0])
    degenerate = _degenerate(x, p, c, fit)
    if degenerate:
        return LengthControlled(None, degenerate, length_weight=length_w)
    value = 1.0 / (1.0 + math.exp(-model_w))
    raw = float(p.mean())
    if is_extreme_change(raw, value):
        return LengthControlled(None, f"LC {value:.3f} is far from the raw win rate {raw:.3f} (AlpacaEval's "
                                      "warning threshold): the length model does not fit", length_weight=length_w)
    # The interval: a percentile bootstrap over prompts of the same estimator, the fit at the CV-chosen C
    # (redoing the CV per resample would add the choice of C's variance, at ~30 s per comparison on 2 cores).
    rng = random.Random(seed)
    samples = []
    for _ in range(BOOTSTRAP):
        idx = [rng.randrange(n) for _ in range(n)]
        pb, fb = p[idx], feature[idx]
        if np.all(pb >= 1.0) or np.all(pb <= 0.0):
            samples.append(float(pb.mean()))
            continue
        wb = _fit(np.column_stack([fb, np.ones(n)]), pb, c).coef_[0][1]
        samples.append(1.0 / (1.0 + math.exp(-float(wb))))
    samples.sort()
    low, high = samples[int(0.025 * len(samples))], samples[min(len(samples) - 1, int(0.975 * len(samples)))]
    return LengthControlled(value, None, min(low, value), max(high, value), length_w)


def _degenerate(x, p, c: float, fit) -> str | None:
    """Why the CV-chosen fit is no measurement, or None: every weight zero (the LC win rate would be sigmoid(0)
    = 0.5 by construction, whatever the verdicts), or C at an edge of the grid with the optimum possibly beyond
    it — at the lower edge always; at the upper edge when a still weaker penalty still moves the fit (the
    weights diverge: near-separable verdicts)."""
    import numpy as np

    weights = fit.coef_[0]
    if np.all(weights == 0.0):
        return (f"cross-validation chose C = {c:.3g}, where the L1 penalty sets every weight to zero: the LC win "
                "rate would be 0.5 by construction, not a measurement")
    if c == C_GRID[0]:
        return f"cross-validation chose the smallest C on the grid ({c:.3g}): the penalty's optimum is not inside it"
    if c == C_GRID[-1]:
        beyond = _fit(x, p, c * 100).coef_[0]
        if np.max(np.abs(beyond - weights)) > 1e-2 * max(1.0, float(np.max(np.abs(weights)))):
            return (f"cross-validation chose the largest C on the grid ({c:.3g}) and the weights still grow "
                    "beyond it: the verdicts are near-separable, the fit has no optimum")
    return None


def figure(preferences: Sequence[float | None], model_lengths: Sequence[int], other_lengths: Sequence[int],
           seed: int = 0) -> dict:
    """Everything reported about one comparison (camelCase keys): n, winRate with its Wilson interval, and
    lcWinRate with its bootstrap interval or lcWinRateReason. Comparisons without a verdict (None) are left out."""
    kept = [(p, a, b) for p, a, b in zip(preferences, model_lengths, other_lengths, strict=True) if p is not None]
    prefs = [p for p, _, _ in kept]
    out: dict = {"n": len(prefs)}
    if not prefs:
        return out
    raw = win_rate(prefs)
    low, high = wilson_interval(raw, len(prefs))
    out.update(winRate=round(raw, 6), winRateLow=round(low, 6), winRateHigh=round(high, 6))
    lc = lc_win_rate(prefs, [a for _, a, _ in kept], [b for _, _, b in kept], seed=seed)
    if lc.value is None:
        out["lcWinRateReason"] = lc.reason
    else:
        out.update(lcWinRate=round(lc.value, 6), lcWinRateLow=round(lc.low, 6), lcWinRateHigh=round(lc.high, 6))
    if lc.length_weight is not None:
        out["lengthWeight"] = round(lc.length_weight, 6)
    return out
