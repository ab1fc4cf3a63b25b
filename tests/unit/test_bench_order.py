"""bench/operator.py's measurement plan (issue 20): no contender is always measured first, rounds are folded
by the median, and the A/A ratio is symmetric. The measurement itself needs the dev cluster (an A/A run:
`bench/operator.py --aa`)."""

from __future__ import annotations

import importlib.util
import sys

from .conftest import ROOT


def _bench():
    spec = importlib.util.spec_from_file_location("bench_operator", ROOT / "bench" / "operator.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_operator", module)
    spec.loader.exec_module(module)
    return module


def test_alternating_order_puts_each_contender_first_equally_often():
    bench = _bench()
    plan = bench.schedule(["A", "B"], 4)
    assert plan == [["A", "B"], ["B", "A"], ["A", "B"], ["B", "A"]]
    shuffled = bench.schedule(["A", "B", "C"], 6, "random", seed=1)
    assert all(sorted(r) == ["A", "B", "C"] for r in shuffled)
    assert shuffled == bench.schedule(["A", "B", "C"], 6, "random", seed=1)  # reproducible
    assert bench.schedule(["A"], 1) == [["A"]]


def test_rounds_fold_into_medians_and_a_timeout_anywhere_counts():
    bench = _bench()
    rounds = [{"label": "x", "first_job_p99_s": 1.0, "runs": 100, "timed_out": False, "standby_peak_rss_mb": None},
              {"label": "x", "first_job_p99_s": 3.0, "runs": 100, "timed_out": True, "standby_peak_rss_mb": None}]
    out = bench.median_result(rounds)
    assert out["first_job_p99_s"] == 2.0 and out["runs"] == 100 and out["timed_out"] is True
    assert out["rounds"] == 2 and out["standby_peak_rss_mb"] is None


def test_aa_ratio_is_the_deviation_either_way():
    bench = _bench()
    ratios = bench.aa_ratios({"first_job_p99_s": 1.0, "first_job_p50_s": 0.5},
                             {"first_job_p99_s": 0.8, "first_job_p50_s": 0.55})
    assert ratios == {"first_job_p99_s": 1.25, "first_job_p50_s": 0.55 / 0.5}
