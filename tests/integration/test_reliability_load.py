"""Load (issue #8): hundreds of runs (quick fake pods) and several every-minute schedules at once, driven by
the operator's controllable clock (SYNPO_CLOCK_FILE). Every run — applied by hand or created by a schedule —
must reach Succeeded, no Job may be created twice, the operator must never restart, and its memory must stay
bounded (RSS sampled every 0.5 s; peak asserted under SYNPO_LOAD_MAX_RSS_MB, default 400).

SYNPO_LOAD_RUNS (default 50, so the file stays near 3 minutes) and SYNPO_LOAD_SCHEDULES (default 3) size it.
On the 2-core dev machine with other jobs running (load average ~6), 50 runs + 9 scheduled ones (590 Jobs,
650 pods) took 192 s; the control plane (kwok, Job controller), not the operator, sets the pace, so 300 runs
(SYNPO_LOAD_RUNS=300) need roughly 15-20 minutes there.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from reliability.chaos import RssSampler

from .test_operator import RUNS, Operator, crds, run_doc  # noqa: F401 - fixture
from .test_schedules import SCHEDULES, Clock, schedule_doc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_RUNS = int(os.environ.get("SYNPO_LOAD_RUNS", "50"))
N_SCHEDULES = int(os.environ.get("SYNPO_LOAD_SCHEDULES", "3"))
TICKS = 3  # scheduled minutes each schedule goes through
MAX_RSS = int(os.environ.get("SYNPO_LOAD_MAX_RSS_MB", "400")) * 2**20
FAST = {"*": {"synpo.dev/fake-duration": "100ms"}}


def _phases(kube, ns) -> tuple[Counter, dict[str, str]]:
    items = kube.get(RUNS.format(ns=ns))["items"]
    phases = {r["metadata"]["name"]: (r.get("status") or {}).get("phase") or "-" for r in items}
    return Counter(phases.values()), phases


def test_hundreds_of_runs_and_schedules_at_once(kube, dev_cluster, crds, namespace, tmp_path, monkeypatch):  # noqa: F811
    clock = Clock(tmp_path / "clock")
    monkeypatch.setenv("SYNPO_CLOCK_FILE", str(clock.path))
    op = Operator(dev_cluster.kubeconfig, namespace, tmp_path, extra_args=("--resync-seconds", "10"))
    op.start()
    sampler = RssSampler(lambda: op.proc.pid if op.proc and op.proc.poll() is None else None)
    uids: dict[str, set[str]] = {}
    stop = threading.Event()

    def ledger() -> None:  # every Job uid seen (a list every 2 s: 3000 Jobs are a big list)
        while not stop.is_set():
            try:
                for job in kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"]:
                    uids.setdefault(job["metadata"]["name"], set()).add(job["metadata"]["uid"])
            except Exception:  # noqa: BLE001
                pass
            stop.wait(2)

    watcher = threading.Thread(target=ledger, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    try:
        for i in range(N_SCHEDULES):
            doc = schedule_doc(f"load-{i}", schedule="* * * * *", successfulRunsHistoryLimit=100,
                               failedRunsHistoryLimit=100)
            doc["spec"]["promotion"] = {"enabled": False}
            kube.post(SCHEDULES.format(ns=namespace), doc)
        for i in range(N_RUNS):
            kube.post(RUNS.format(ns=namespace), run_doc(f"hand-{i:03d}", pods=FAST))
        applied = time.monotonic() - t0
        tick_waits = []
        for tick in range(1, TICKS + 1):  # each schedule's minute comes TICKS times while the runs go
            moment = clock.start.replace(second=0) + timedelta(minutes=tick)
            clock.set(moment)
            minute = int(moment.timestamp()) // 60
            t_tick = time.monotonic()
            for i in range(N_SCHEDULES):  # under load, each scheduled minute still gets its run
                kube.wait_for(f"{RUNS.format(ns=namespace)}/load-{i}-{minute}", lambda _: True, timeout=120)
            tick_waits.append(round(time.monotonic() - t_tick, 1))
        expected = N_RUNS + N_SCHEDULES * TICKS
        deadline = time.monotonic() + 540
        while True:
            counts, phases = _phases(kube, namespace)
            done = counts.get("Succeeded", 0) + counts.get("Failed", 0)
            if len(phases) >= expected and done == len(phases):
                break
            assert op.proc.poll() is None, f"the operator exited: {op.logs()[-3000:]}"
            assert time.monotonic() < deadline, f"not all runs finished: {dict(counts)} of {len(phases)}"
            time.sleep(3)
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        peak = sampler.stop()
        op_alive = op.proc.poll() is None
        metrics = op.metrics() if op_alive else ""
        op.stop()
        # release finalizers so the namespace can go
        for name in _phases(kube, namespace)[1]:
            try:
                kube.patch(f"{RUNS.format(ns=namespace)}/{name}", {"metadata": {"finalizers": None}})
            except Exception:  # noqa: BLE001
                pass
    watcher.join(5)

    assert counts == Counter({"Succeeded": len(phases)}), dict(counts)
    scheduled = [n for n in phases if not n.startswith("hand-")]
    assert len(scheduled) == N_SCHEDULES * TICKS, sorted(scheduled)
    assert op_alive and op.starts == 1
    duplicated = {n: u for n, u in uids.items() if len(u) > 1}
    assert not duplicated, duplicated
    samples = [b for _, b in sampler.samples]
    reconciles = next((line.split()[-1] for line in metrics.splitlines()
                       if line.startswith("synpo_reconciles_total ")), "?")
    print(f"RELIABILITY load runs={len(phases)} (applied={N_RUNS} scheduled={len(scheduled)}) "
          f"schedules={N_SCHEDULES} jobs={len(uids)} duplicated_jobs=0 all_succeeded=1 "
          f"apply_s={applied:.0f} schedule_tick_s={tick_waits} total_s={elapsed:.0f} reconciles={reconciles} "
          f"rss_start_mb={samples[0] / 2**20:.0f} rss_peak_mb={peak / 2**20:.0f} "
          f"rss_end_mb={samples[-1] / 2**20:.0f} operator_restarts=0")
    assert peak < MAX_RSS, f"operator peak RSS {peak / 2**20:.0f} MiB"
