"""Win rates, raw and length-controlled (AlpacaEval 2.0's method, reduced to one model vs one baseline).

AlpacaEval 2.0 fits a logistic regression of the judge's preference on the model-vs-baseline difference plus
a length term tanh(Δlen / sd(Δlen)), then reports the predicted preference with the length term set to zero,
averaged over the prompts. With one model and one baseline the model term is a single intercept. Pure
numpy/scikit-learn; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def win_rate(preferences: Sequence[float]) -> float:
    """Mean preference for the model (1 win, 0 loss, 0.5 tie)."""
    return sum(preferences) / len(preferences) if preferences else float("nan")


def preference_from_scores(model: float, other: float, tie: float = 1e-9) -> float:
    if abs(model - other) <= tie:
        return 0.5
    return 1.0 if model > other else 0.0


def length_features(model_lengths: Sequence[int], other_lengths: Sequence[int]) -> list[float]:
    """tanh of the length difference standardised by its standard deviation (0 when all equal)."""
    diffs = [float(a - b) for a, b in zip(model_lengths, other_lengths, strict=True)]
    if not diffs:
        return []
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / len(diffs))
    return [math.tanh(d / sd) if sd > 0 else 0.0 for d in diffs]


def lc_win_rate(preferences: Sequence[float], model_lengths: Sequence[int], other_lengths: Sequence[int],
                c: float = 10.0) -> float:
    """Length-controlled win rate.

    Soft preferences (ties = 0.5) are fitted as two weighted rows. When the preferences are all one class
    the regression is undefined and the raw win rate is returned. `c`: inverse L2 strength on the length
    weight (the intercept is unpenalised), a mild prior as in AlpacaEval's regularised fit.
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    n = len(preferences)
    if n == 0:
        return float("nan")
    x = np.array(length_features(model_lengths, other_lengths)).reshape(-1, 1)
    p = np.clip(np.asarray(preferences, dtype=float), 0.0, 1.0)
    if np.all(p >= 1.0) or np.all(p <= 0.0):
        return win_rate(preferences)
    xs = np.vstack([x, x])
    ys = np.concatenate([np.ones(n), np.zeros(n)])
    ws = np.concatenate([p, 1.0 - p])
    keep = ws > 0
    fit = LogisticRegression(C=c).fit(xs[keep], ys[keep], sample_weight=ws[keep])
    # Length term zeroed: every prompt gets the same prediction sigmoid(intercept).
    return float(1.0 / (1.0 + math.exp(-float(fit.intercept_[0]))))
