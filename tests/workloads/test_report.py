"""The report's paired tests: which models it compares, on which prompts (pure; no run needed)."""

from __future__ import annotations

import pytest

from synpo_workloads.report import markdown, paired_tests

pytestmark = pytest.mark.workloads


def test_paired_tests_compare_models_on_the_same_prompts():
    outcomes = {
        0: {"references": {0: 1.0, 1: 0.0, 2: 0.0, 3: 1.0}},
        1: {"references": {0: 1.0, 1: 1.0, 2: 1.0, 3: 0.5}, "M0": {0: 1.0, 1: 1.0, 2: 0.0, 3: 0.5}},
        2: {"references": {0: 0.0, 1: 1.0, 3: 1.0}, "M0": {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0}},
    }
    rows = paired_tests(outcomes)
    assert [(x["iteration"], x["comparison"]) for x in rows] == [
        (1, "M1 vs M0 head to head (its win rate against M0)"),
        (1, "M1 vs M0, each against the references"),
        (2, "M2 vs M0 head to head (its win rate against M0)"),
        (2, "M2 vs M0, each against the references"),
        (2, "M2 vs M1, each against the references"),
    ]
    h2h, vs_m0, m2_m0, m2_m1 = rows[0], rows[1], rows[3], rows[4]
    assert (h2h["better"], h2h["worse"], h2h["same"]) == (2, 1, 1)
    assert (vs_m0["better"], vs_m0["worse"], vs_m0["same"], vs_m0["n"]) == (2, 1, 1, 4)
    # prompt 2 has no verdict for M2: left out, not counted as a loss
    assert (m2_m0["n"], m2_m0["better"], m2_m0["worse"], m2_m0["same"]) == (3, 1, 1, 1)
    assert (m2_m1["n"], m2_m1["better"], m2_m1["worse"]) == (3, 1, 1)
    assert rows[2]["worse"] == 4 and rows[2]["pValue"] == 0.125


def test_the_report_lists_the_paired_tests():
    rows = [{"iteration": 0, "outcomes": {"references": {0: 1.0, 1: 1.0}}},
            {"iteration": 1, "outcomes": {"references": {0: 0.0, 1: 0.0}, "M0": {0: 0.0, 1: 0.0}}}]
    text = markdown(rows, "t")
    assert "## Paired tests (first judge)" in text
    assert "| 1 | M1 vs M0, each against the references | 2 | 0 / 2 / 0 | 0.5 |" in text
    assert "| 1 | M1 vs M0 head to head (its win rate against M0) | 2 | 0 / 2 / 0 | 0.5 |" in text
    assert "Paired tests" not in markdown([{"iteration": 0}], "t")
