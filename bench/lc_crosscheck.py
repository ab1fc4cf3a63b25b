"""Cross-check (run by hand: PYTHONPATH=operator:workloads .venv/bin/python bench/lc_crosscheck.py [ALPACA_EVAL_GIT_DIR]).

Cross-check synpo's LC fit against alpaca_eval's own fit_LogisticRegressionCV (loaded from the fetched
source at run time, not copied) on synthetic annotations."""
import ast, math, random, subprocess, sys, warnings
import numpy as np, pandas as pd
warnings.filterwarnings("ignore")
src = subprocess.run(["git", "-C", sys.argv[1] if len(sys.argv) > 1 else "/work/.mirror/tatsu-lab+alpaca_eval/repo", "show",
                      "HEAD:src/alpaca_eval/metrics/glm_winrate.py"], capture_output=True, text=True).stdout
tree = ast.parse(src)
keep = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in
        ("logloss", "logloss_continuous", "fit_LogisticRegressionCV", "get_is_extreme_changes")]
import sklearn
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import make_scorer, log_loss as sk_log_loss
from sklearn.model_selection import GroupKFold, StratifiedKFold
ns = dict(np=np, pd=pd, sklearn=sklearn, LogisticRegression=LogisticRegression,
          LogisticRegressionCV=LogisticRegressionCV, make_scorer=make_scorer, sk_log_loss=sk_log_loss,
          GroupKFold=GroupKFold, StratifiedKFold=StratifiedKFold)
exec(compile(ast.Module(body=keep, type_ignores=[]), "glm_winrate", "exec"), ns)
from synpo_workloads.winrate import length_features, lc_win_rate, is_extreme_change

for trial, (n, a_len, b_mod) in enumerate([(40, 1.5, 0.3), (80, 2.0, -0.5), (60, 0.5, 0.8), (100, 3.0, 0.0),
                                            (30, 1.0, 0.2)]):
    r = random.Random(trial)
    ml = [r.randint(50, 800) for _ in range(n)]; ol = [r.randint(50, 800) for _ in range(n)]
    feat = length_features(ml, ol)
    prefs = [r.choice([0.0, 1.0]) if r.random() < 0.1 else
             (1.0 if r.random() < 1 / (1 + math.exp(-(a_len * f + b_mod))) else 0.0) for f in feat]
    df = pd.DataFrame({"np.tanh(std_delta_len)": feat, "not_gamed_baseline.astype(float)": 1.0, "preference": prefs})
    model = ns["fit_LogisticRegressionCV"](df, "preference", is_ytrue_proba=True, n_splits=5)
    test = pd.DataFrame({"np.tanh(std_delta_len)": [0.0], "not_gamed_baseline.astype(float)": [1.0]})
    theirs = float(model.predict_proba(test)[:, 1][0])
    ours = lc_win_rate(prefs, ml, ol)
    warn = ns["get_is_extreme_changes"](100 * np.mean(prefs), 100 * theirs)
    print(f"n={n} raw={np.mean(prefs):.3f} alpaca_eval LC={theirs:.4f} (C={model.C_[0]:.3g}, warn={warn}) "
          f"synpo LC={ours.value if ours.value is None else round(ours.value, 4)} reason={ours.reason} "
          f"warn={is_extreme_change(float(np.mean(prefs)), theirs)}")
