"""Leader election logic (controller/leader.py) against an in-memory Lease store with the API server's
optimistic concurrency (a write carrying an old resourceVersion gets 409), and an injected clock. The real
API server and two real operator processes: tests/integration/test_operator_ha.py."""

from __future__ import annotations

import copy

from synpo_operator.controller.leader import LeaderElector
from synpo_operator.kube import KubeError


class Leases:
    def __init__(self):
        self.obj: dict | None = None
        self.rv = 0

    def __call__(self, method, path, body=None, **_):
        if method == "GET":
            if self.obj is None:
                raise KubeError(method, path, 404, {"reason": "NotFound"})
            return copy.deepcopy(self.obj)
        if method == "POST":
            if self.obj is not None:
                raise KubeError(method, path, 409, {"reason": "AlreadyExists"})
        if method == "PUT" and body["metadata"].get("resourceVersion") != str(self.rv):
            raise KubeError(method, path, 409, {"reason": "Conflict"})
        self.rv += 1
        self.obj = copy.deepcopy(body)
        self.obj["metadata"]["resourceVersion"] = str(self.rv)
        return copy.deepcopy(self.obj)


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def elector(store, clock, identity, events):
    return LeaderElector(name="synpo-operator", namespace="ns", identity=identity, lease_seconds=15,
                         renew_seconds=5, request=store, monotonic=clock,
                         on_started=lambda: events.append(("started", identity)),
                         on_lost=lambda: events.append(("lost", identity)))


def test_one_leader_and_a_takeover_only_after_the_lease_duration():
    store, clock, events = Leases(), Clock(), []
    a, b = elector(store, clock, "a", events), elector(store, clock, "b", events)
    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False
    assert store.obj["spec"]["holderIdentity"] == "a"
    clock.t = 5.0
    assert a.try_acquire_or_renew() is True  # renewed: the record changed
    clock.t = 14.0
    assert b.try_acquire_or_renew() is False  # b saw the renewal at t=14: its 15 s start now
    clock.t = 28.0  # a is gone (no renewals since t=5); b has seen the same record for 14 s
    assert b.try_acquire_or_renew() is False
    clock.t = 29.5
    assert b.try_acquire_or_renew() is True
    spec = store.obj["spec"]
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1


def test_a_stale_write_loses_the_race():
    store, clock, events = Leases(), Clock(), []
    a = elector(store, clock, "a", events)
    assert a.try_acquire_or_renew()
    clock.t = 100.0
    stale = store("GET", "")  # b read the expired Lease ...
    assert a.try_acquire_or_renew()  # ... a renewed meanwhile ...
    stale["spec"]["holderIdentity"] = "b"
    try:
        store("PUT", "", stale)  # ... so b's write, from the old resourceVersion, is refused
        raise AssertionError("a stale write went through")
    except KubeError as err:
        assert err.conflict
    assert store.obj["spec"]["holderIdentity"] == "a"


def test_release_hands_over_at_once():
    store, clock, events = Leases(), Clock(), []
    a, b = elector(store, clock, "a", events), elector(store, clock, "b", events)
    assert a.try_acquire_or_renew()
    a.leading = True
    assert b.try_acquire_or_renew() is False
    a.release()
    assert b.try_acquire_or_renew() is True  # no need to wait out the lease
    assert store.obj["spec"]["holderIdentity"] == "b"


def test_a_leader_that_cannot_renew_steps_down_before_a_standby_may_take_over_and_leads_again_later():
    store, clock, events = Leases(), Clock(), []
    a = elector(store, clock, "a", events)
    down = {"now": False}

    def flaky(method, path, body=None, **kw):
        if down["now"]:
            raise KubeError(method, path, 503, {"reason": "ServiceUnavailable"})
        return store(method, path, body, **kw)

    a._request = flaky
    waits = iter([5.0, 9.0, 10.5, 11.0, 20.0])  # the times after each sleep
    a._stop.wait = lambda seconds: _advance(a, clock, waits, down)
    a.run()
    assert events == [("started", "a"), ("lost", "a"), ("started", "a")]


def _advance(a, clock, waits, down):
    """The elector's sleep: move the clock on; the API server is away from t=5 to t=11; stop at the end."""
    t = next(waits, None)
    if t is None:
        a._stop.set()
        return True
    clock.t = t
    down["now"] = 5.0 <= t < 11.0
    return False


def _samples(metrics) -> list[tuple[str, dict, float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(metrics.render().decode())
            for s in f.samples]


def _per_object(metrics) -> list[tuple[str, dict, float]]:
    """Series about one run or schedule, and the run counts by phase (what only the leader may export)."""
    return [s for s in _samples(metrics) if {"run", "schedule", "phase"} & set(s[1])]


def test_a_follower_exports_no_per_run_series_and_synpo_leader_says_who_leads():
    from synpo_operator.controller.app import Operator
    from synpo_operator.controller.settings import Settings
    from synpo_operator.events import EventPoster
    from synpo_operator.metrics import Metrics
    from synpo_operator.reconcile import Outcome
    from synpo_operator.schedule import ScheduleOutcome

    metrics = Metrics()
    op = Operator(Settings(identity="pod-a"), metrics, EventPoster(send=lambda body: None))
    assert ("synpo_leader", {"pod": "pod-a"}, 0.0) in _samples(metrics)
    assert _per_object(metrics) == []  # a standby from the start

    metrics.set_leader("pod-a", True)  # what op.lead() does first (it then lists schedules on the API server)
    status = {"phase": "Running", "iteration": 2,
              "iterations": [{"index": 1, "pairsKept": 10, "winRate": 0.6, "against": "M0", "n": 8}],
              "conditions": [{"type": "StageStuck", "status": "True", "reason": "ImagePullBackOff"}]}
    metrics.observe("ns", "run-a", Outcome(status=status, phase="Running"))
    metrics.observe_schedule("ns", "weekly", ScheduleOutcome(status={"promoted": {"value": 0.7}}), created=1)
    exported = _per_object(metrics)
    assert ("synpo_leader", {"pod": "pod-a"}, 1.0) in _samples(metrics)
    for name in ("synpo_run_iteration", "synpo_run_stuck", "synpo_pairs_kept", "synpo_win_rate",
                 "synpo_promoted_score", "synpo_runs"):
        assert any(s[0] == name for s in exported), (name, exported)

    op.follow()  # the Lease is lost: stand by
    assert ("synpo_leader", {"pod": "pod-a"}, 0.0) in _samples(metrics)
    assert _per_object(metrics) == []
    metrics.observe("ns", "run-a", Outcome(status=status, phase="Running"))  # a reconcile still in flight
    assert _per_object(metrics) == []
    assert any(s[0] == "synpo_reconciles_total" and s[2] == 2 for s in _samples(metrics))  # counters stay

    # leading again: a finished run's gauges come back from the informer cache, without a reconcile
    from synpo_operator.kube import WatchCache

    cache = WatchCache("/runs", None)
    cache.put({"metadata": {"namespace": "ns", "name": "done", "generation": 1, "resourceVersion": "5"},
               "status": {"phase": "Succeeded", "observedGeneration": 1, "iteration": 1,
                          "iterations": [{"index": 1, "pairsKept": 3}]}})
    op.runs.informers = {"runs": [cache]}
    op.runs._started = True  # the workers were started when it first led
    metrics.set_leader("pod-a", True)
    op.runs.resume()
    assert ("synpo_pairs_kept", {"namespace": "ns", "run": "done", "iteration": "1"}, 3.0) in _samples(metrics)
    assert ("synpo_runs", {"phase": "Succeeded"}, 1.0) in _samples(metrics)
