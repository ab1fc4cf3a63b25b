"""High availability: two `synpo operator` processes against the real API server, one Lease.

The first holds the Lease and reconciles; the second waits with warm informers. `kill -9` of the leader in the
middle of a run: the standby takes over within the lease duration, the run reaches Succeeded, every Job was
created exactly once, the run's status never went backwards, and the Lease names the new holder.
"""

from __future__ import annotations

import threading
import time
import urllib.request

import pytest
from reliability.chaos import JobLedger

from synpo_devcluster.client import ApiError

from .test_operator import RUNS, Operator, apply, crds, run_doc, wait_run, wait_until  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

LEASE_SECONDS = 5


def lease(kube, namespace: str) -> dict:
    return kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/synpo-operator")


def holder(kube, namespace: str) -> str | None:
    try:
        return lease(kube, namespace)["spec"].get("holderIdentity")
    except ApiError as err:
        if err.status == 404:
            return None
        raise


class StatusHistory:
    """Polls the run (every 50 ms) and keeps each distinct status, in the order the API server served them."""

    def __init__(self, kube, namespace: str, name: str):
        self.kube, self.path = kube, f"{RUNS.format(ns=namespace)}/{name}"
        self.seen: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                status = self.kube.get(self.path).get("status") or {}
            except Exception:  # noqa: BLE001 - not created yet, or a blip
                status = None
            if status and (not self.seen or status != self.seen[-1]):
                self.seen.append(status)
            self._stop.wait(0.05)

    def stop(self) -> list[dict]:
        self._stop.set()
        self._thread.join(5)
        return self.seen


def _succeeded(status: dict) -> set[str]:
    return {s["name"] for s in status.get("stages", []) if s["phase"] == "Succeeded"}


def _ready(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200
    except OSError:
        return False


def _metrics(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def test_standby_takes_over_when_the_leader_is_killed(kube, dev_cluster, crds, namespace, tmp_path):  # noqa: F811
    args = ("--lease-seconds", str(LEASE_SECONDS), "--renew-seconds", "1")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    leader = Operator(dev_cluster.kubeconfig, namespace, tmp_path / "a", extra_args=(*args, "--identity", "op-a"))
    standby = Operator(dev_cluster.kubeconfig, namespace, tmp_path / "b", extra_args=(*args, "--identity", "op-b"))
    leader.start()
    try:
        wait_until("op-a holds the Lease", lambda: holder(kube, namespace) == "op-a")
        standby.start()
        wait_until("the standby's informers synced (/readyz)", lambda: _ready(standby.port))
        assert lease(kube, namespace)["spec"]["holderIdentity"] == "op-a"

        ledger = JobLedger(kube, namespace)
        history = StatusHistory(kube, namespace, "ha")
        apply(kube, namespace, run_doc("ha", pods={"*": {"synpo.dev/fake-duration": "1500ms"}}))
        wait_run(kube, namespace, "ha", lambda s: len(_succeeded(s)) >= 2, timeout=90)
        assert "created Job for stage" not in standby.logs()  # the standby did nothing so far
        # only the leader exports per-run series (a ServiceMonitor scrapes both pods); synpo_leader says who
        assert 'synpo_leader{pod="op-a"} 1.0' in _metrics(leader.port) and 'run="ha"' in _metrics(leader.port)
        assert 'synpo_leader{pod="op-b"} 0.0' in _metrics(standby.port)
        assert 'run="ha"' not in _metrics(standby.port) and "synpo_runs{" not in _metrics(standby.port)
        leader.kill9()
        killed_at = time.monotonic()

        wait_until("op-b holds the Lease", lambda: holder(kube, namespace) == "op-b",
                   timeout=LEASE_SECONDS * 3)
        took_over = time.monotonic() - killed_at
        wait_until("the new leader exports the run's series",
                   lambda: 'synpo_leader{pod="op-b"} 1.0' in (text := _metrics(standby.port)) and 'run="ha"' in text)
        done = wait_run(kube, namespace, "ha", lambda s: s.get("phase") in ("Succeeded", "Failed"), timeout=180)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        seen = ledger.stop()
        statuses = history.stop()

        # the Lease names the new holder, and counts the transition
        spec = lease(kube, namespace)["spec"]
        assert spec["holderIdentity"] == "op-b" and spec["leaseTransitions"] >= 1
        assert took_over < LEASE_SECONDS + 5, f"takeover took {took_over:.1f} s"
        # every Job exactly once (11 stages with the pre-flight; none created twice, none replaced)
        assert len(seen) == 11 and all(len(uids) == 1 for uids in seen.values()), seen
        assert "created Job for stage" in standby.logs()  # the standby did take over
        # status never went backwards: succeeded stages only grow, startTime never changes, phase ends once
        for before, after in zip(statuses, statuses[1:], strict=False):
            assert _succeeded(before) <= _succeeded(after), (before, after)
            assert before.get("startTime") in (None, after.get("startTime")), (before, after)
            assert before.get("phase") != "Succeeded" or after.get("phase") == "Succeeded"
    finally:
        standby.stop()
        leader.stop()
