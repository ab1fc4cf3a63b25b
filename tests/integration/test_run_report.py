"""The report where cluster users are (issue 21): the evaluate stage's result names the run's report, the operator
shows its URI in the run's status, and `kubectl get spr -o wide` shows the latest win rate with its opponent, n
and the report. Stage results are faked through the run's `synpo.dev/test-pod-annotations` (kwok plays kubelet)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

from .test_operator import apply, crds, operator, run_doc, wait_run  # noqa: F401 - crds, operator: fixtures

EVALUATE = {"rows": 20, "against": "M0", "n": 20, "winRate": 0.56, "winRateLow": 0.3508, "winRateHigh": 0.7498,
            "vsM0N": 20, "vsM0WinRate": 0.56, "vsM0WinRateLow": 0.3508, "vsM0WinRateHigh": 0.7498,
            "report": "report.md"}

_spec = importlib.util.spec_from_file_location(  # kubectl as test_helm_install finds it
    "synpo_chart_helpers", Path(__file__).resolve().parents[1] / "packaging" / "chart_helpers.py")
chart = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chart)


def test_the_run_status_and_kubectl_show_the_report_and_the_win_rates_opponent(kube, dev_cluster, operator,  # noqa: F811
                                                                               namespace):
    doc = run_doc("reported", pods={"evaluate": {"synpo.dev/fake-termination-message": json.dumps(EVALUATE)},
                                    "*": {"synpo.dev/fake-duration": "100ms"}})
    apply(kube, namespace, doc)
    st = wait_run(kube, namespace, "reported", lambda s: s.get("phase") in ("Succeeded", "Failed"), timeout=120)
    st = st["status"]
    assert st["phase"] == "Succeeded", st
    assert st["report"] == f"s3://bucket/runs/{namespace}/reported/report.md"
    assert (st["latestWinRate"], st["latestWinRateAgainst"], st["latestWinRateN"]) == (0.56, "M0", 20)

    out = subprocess.run([chart.tool("kubectl"), "get", "spr", "reported", "-n", namespace, "-o", "wide"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "KUBECONFIG": dev_cluster.kubeconfig})
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "ITERATION", "STAGE", "WINRATE", "AGAINST", "N", "REPORT", "AGE"]
    cells = row.split()
    assert cells[:2] == ["reported", "Succeeded"]
    assert cells[-5:-1] == ["0.56", "M0", "20", f"s3://bucket/runs/{namespace}/reported/report.md"], row
