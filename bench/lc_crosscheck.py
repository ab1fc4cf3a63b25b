"""Cross-check synpo's LC win rate against alpaca_eval's own fit on synthetic annotations.

alpaca_eval's `fit_LogisticRegressionCV` (src/alpaca_eval/metrics/glm_winrate.py) is loaded from a git checkout of
tatsu-lab/alpaca_eval at run time (it is not copied here; its module imports hub downloads and patsy, so only the
pure functions are taken from its source) and fitted on the same features synpo uses; both LC values are printed.
Run: PYTHONPATH=operator:workloads .venv/bin/python bench/lc_crosscheck.py [ALPACA_EVAL_GIT_DIR]
"""

from __future__ import annotations

import ast
import math
import random
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import sklearn
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import log_loss, make_scorer
from sklearn.model_selection import GroupKFold, StratifiedKFold

from synpo_workloads.winrate import is_extreme_change, lc_win_rate, length_features

FUNCTIONS = ("logloss", "logloss_continuous", "fit_LogisticRegressionCV", "get_is_extreme_changes")


def alpaca_eval_functions(git_dir: str) -> dict:
    src = subprocess.run(["git", "-C", git_dir, "show", "HEAD:src/alpaca_eval/metrics/glm_winrate.py"],
                         capture_output=True, text=True, check=True).stdout
    body = [n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name in FUNCTIONS]
    ns = dict(np=np, pd=pd, sklearn=sklearn, LogisticRegression=LogisticRegression,
              LogisticRegressionCV=LogisticRegressionCV, make_scorer=make_scorer, sk_log_loss=log_loss,
              GroupKFold=GroupKFold, StratifiedKFold=StratifiedKFold)
    exec(compile(ast.Module(body=body, type_ignores=[]), "glm_winrate.py", "exec"), ns)  # noqa: S102
    return ns


def synthetic(trial: int, n: int, length_weight: float, model_weight: float):
    """Annotations with a known length effect; tests/workloads/test_winrate.py pins alpaca_eval's LC on them."""
    r = random.Random(trial)
    ml = [r.randint(50, 800) for _ in range(n)]
    ol = [r.randint(50, 800) for _ in range(n)]
    feat = length_features(ml, ol)
    prefs = [r.choice([0.0, 1.0]) if r.random() < 0.1 else
             (1.0 if r.random() < 1 / (1 + math.exp(-(length_weight * f + model_weight))) else 0.0) for f in feat]
    return prefs, ml, ol, feat


def main() -> None:
    warnings.filterwarnings("ignore")
    ae = alpaca_eval_functions(sys.argv[1] if len(sys.argv) > 1 else "/work/.mirror/tatsu-lab+alpaca_eval/repo")
    for trial, n, lw, mw in [(0, 40, 1.5, 0.3), (1, 80, 2.0, -0.5), (2, 60, 0.5, 0.8), (3, 100, 3.0, 0.0),
                             (4, 30, 1.0, 0.2)]:
        prefs, ml, ol, feat = synthetic(trial, n, lw, mw)
        df = pd.DataFrame({"np.tanh(std_delta_len)": feat, "not_gamed_baseline.astype(float)": 1.0,
                           "preference": prefs})
        model = ae["fit_LogisticRegressionCV"](df, "preference", is_ytrue_proba=True, n_splits=5)
        test = pd.DataFrame({"np.tanh(std_delta_len)": [0.0], "not_gamed_baseline.astype(float)": [1.0]})
        theirs = float(model.predict_proba(test)[:, 1][0])
        ours = lc_win_rate(prefs, ml, ol)
        raw = float(np.mean(prefs))
        print(f"n={n} raw={raw:.4f} alpaca_eval LC={theirs:.4f} (C={model.C_[0]:.3g}, "
              f"warn={ae['get_is_extreme_changes'](100 * raw, 100 * theirs)}) synpo LC="
              f"{'null' if ours.value is None else f'{ours.value:.4f}'} (warn={is_extreme_change(raw, theirs)})")


if __name__ == "__main__":
    main()
