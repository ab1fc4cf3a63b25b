"""Concurrent-run caps: slot states, oldest-first admission within both caps, the index's serialised
admissions, and the reconcile gate (WaitingForCapacity)."""

from __future__ import annotations

import threading

import pytest

from synpo_operator.capacity import (
    CapacityIndex,
    Caps,
    RunSlot,
    admissions,
    capacity_left,
    run_slot,
    slot_state,
    wait_message,
)

from .test_reconcile import Harness


def body(name: str, ns: str = "ns", created: str = "2026-01-01T00:00:00Z", *, phase: str | None = None,
         started: bool = False, suspend: bool = False, deleting: bool = False, schedule: str | None = None) -> dict:
    meta: dict = {"name": name, "namespace": ns, "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T01:00:00Z"
    if schedule:
        meta["labels"] = {"synpo.dev/schedule": schedule}
    status: dict = {}
    if phase:
        status["phase"] = phase
    if started:
        status["startTime"] = created
    return {"metadata": meta, "spec": {"suspend": suspend}, "status": status}


def slot(name: str, state: str, ns: str = "ns", minute: int = 0) -> RunSlot:
    return RunSlot(ns, name, f"2026-01-01T00:{minute:02d}:00Z", state)  # type: ignore[arg-type]


@pytest.mark.parametrize("kw, state", [
    ({}, "waiting"),
    ({"phase": "Pending"}, "waiting"),
    ({"started": True, "phase": "Running"}, "active"),
    ({"started": True, "phase": "Pending"}, "active"),     # queued by Kueue: its Jobs exist
    ({"started": True, "phase": "Suspended"}, "active"),   # a started run keeps its slot while suspended
    ({"suspend": True}, "idle"),                          # suspended before starting: not queued
    ({"started": True, "phase": "Succeeded"}, "idle"),
    ({"phase": "Failed"}, "idle"),                        # e.g. InvalidSpec
    ({"started": True, "phase": "Running", "deleting": True}, "idle"),
])
def test_slot_state(kw, state):
    assert slot_state(body("r", **kw)) == state


def test_stages_in_status_count_as_started():
    b = body("r", phase="Running")
    b["status"]["stages"] = [{"name": "i0-keywords", "phase": "Running"}]
    assert slot_state(b) == "active"


def test_admission_is_oldest_first_within_the_global_cap():
    slots = [slot("busy", "active", minute=0), slot("w3", "waiting", minute=3), slot("w1", "waiting", minute=1),
             slot("w2", "waiting", minute=2)]
    assert admissions(slots, Caps(max_active=3)) == {("ns", "w1"), ("ns", "w2")}
    assert admissions(slots, Caps(max_active=1)) == set()
    assert admissions(slots, Caps()) == {("ns", "w1"), ("ns", "w2"), ("ns", "w3")}


def test_a_full_namespace_does_not_block_other_namespaces():
    slots = [slot("a-busy", "active", ns="a"), slot("a-old", "waiting", ns="a", minute=1),
             slot("b-young", "waiting", ns="b", minute=5), slot("b-younger", "waiting", ns="b", minute=6)]
    assert admissions(slots, Caps(max_per_namespace=1)) == {("b", "b-young")}
    # both caps: the global one is reached after b-young
    assert admissions(slots, Caps(max_active=2, max_per_namespace=2)) == {("a", "a-old")}


def test_capacity_left_counts_waiting_runs_too():
    slots = [slot("x", "active"), slot("y", "waiting"), slot("z", "idle"), slot("o", "active", ns="other")]
    assert capacity_left(slots, "ns", Caps()) is None
    assert capacity_left(slots, "ns", Caps(max_per_namespace=3)) == 1
    assert capacity_left(slots, "ns", Caps(max_active=3)) == 0
    assert capacity_left(slots, "fresh", Caps(max_active=10, max_per_namespace=1)) == 1
    assert capacity_left(slots, "ns", Caps(max_per_namespace=1)) == 0  # never negative


def test_wait_message_names_the_counts():
    slots = [slot("x", "active"), slot("w0", "waiting", minute=1), slot("w1", "waiting", minute=2)]
    msg = wait_message(slots, slots[2], Caps(max_active=4, max_per_namespace=1))
    assert msg == ("waiting for capacity: 1/4 runs active (--max-active-runs), 1/1 active in namespace ns "
                   "(--max-active-runs-per-namespace); 1 waiting run(s) ahead")


def test_caps_parse():
    assert Caps.parse(None, "") == Caps()
    assert Caps.parse("0", "2") == Caps(None, 2)
    assert not Caps.parse("0", "0").limited
    with pytest.raises(ValueError):
        Caps.parse("-1", None)


def test_index_admits_up_to_the_cap_and_reserves_the_slot():
    index = CapacityIndex(Caps(max_active=1))
    first, second = body("first", created="2026-01-01T00:00:00Z"), body("second", created="2026-01-01T00:01:00Z")
    index.update(first)
    index.update(second)
    assert index.admit(second) == (False, wait_message(index.slots(), run_slot(second), index.caps))
    assert index.admit(first) == (True, "")
    # the reservation holds although no event has shown the run started yet, even after a stale event
    index.update(first)
    assert index.admit(second)[0] is False
    assert index.admit(first) == (True, "")          # asking again keeps the slot
    assert index.capacity_left("ns") == 0
    # the first run finishes: the slot goes to the second
    index.update(body("first", phase="Succeeded", started=True))
    assert index.admissible() == [("ns", "second")]
    assert index.admit(second) == (True, "")


def test_index_without_caps_admits_everything():
    index = CapacityIndex()
    assert index.admit(body("a")) == (True, "")
    assert index.capacity_left("ns") is None


def test_index_forget_and_prime():
    index = CapacityIndex(Caps(max_per_namespace=1))
    index.replace_all([body("busy", started=True, phase="Running")])
    assert index.admit(body("new", created="2026-01-02T00:00:00Z"))[0] is False
    assert index.forget("ns", "busy") is not None
    assert index.admit(body("new", created="2026-01-02T00:00:00Z")) == (True, "")


def test_update_reports_changes():
    index = CapacityIndex()
    old, new = index.update(body("r", schedule="nightly"))
    assert old is None and new.state == "waiting" and new.schedule == "nightly"
    old, new = index.update(body("r", schedule="nightly", started=True, phase="Running"))
    assert (old.state, new.state, new.phase) == ("waiting", "active", "Running")


def test_concurrent_admissions_never_exceed_the_cap():
    index = CapacityIndex(Caps(max_active=3))
    bodies = [body(f"r{i:02d}", created=f"2026-01-01T00:{i:02d}:00Z") for i in range(20)]
    for b in bodies:
        index.update(b)
    results: dict[str, bool] = {}
    barrier = threading.Barrier(20)

    def ask(b: dict) -> None:
        barrier.wait()
        results[b["metadata"]["name"]] = index.admit(b)[0]

    threads = [threading.Thread(target=ask, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(n for n, ok in results.items() if ok) == ["r00", "r01", "r02"]


# ---- the gate in reconcile ------------------------------------------------------------------------------

def test_reconcile_waits_for_capacity_then_starts():
    h = Harness()
    h.body["metadata"]["creationTimestamp"] = "2025-01-01T11:00:00Z"
    allowed = {"ok": False}
    out = h.step(admit=lambda: (allowed["ok"], "waiting for capacity: 1/1 runs active (--max-active-runs)"))
    assert out.started == [] and h.job_names() == []
    st = h.status
    assert st["phase"] == "Pending" and "startTime" not in st
    ready = {c["type"]: c for c in st["conditions"]}["Ready"]
    assert ready["reason"] == "WaitingForCapacity" and "1/1 runs active" in ready["message"]
    assert [e.reason for e in out.events] == ["WaitingForCapacity"]
    # no second Event, no status churn while nothing changes
    writes = h.writes
    again = h.step(admit=lambda: (False, "waiting for capacity: 1/1 runs active (--max-active-runs)"))
    assert again.events == [] and h.writes == writes

    allowed["ok"] = True
    out = h.step(admit=lambda: (allowed["ok"], ""))
    assert out.started == ["i0-preflight"] and h.status["phase"] == "Running" and h.status["startTime"]


def test_the_gate_is_only_asked_before_the_first_stage():
    h = Harness()
    h.step()
    asked = []
    h.kube.finish("i0-preflight")
    h.step(admit=lambda: asked.append(1) or (False, "no"))
    assert asked == [] and h.status["phase"] == "Running"


def test_invalid_spec_fails_without_asking_for_capacity():
    h = Harness(storage={"uri": "./local"})
    asked = []
    h.step(admit=lambda: asked.append(1) or (True, ""))
    assert asked == [] and h.status["phase"] == "Failed"


def test_suspended_unstarted_run_is_not_asked():
    h = Harness(suspend=True)
    asked = []
    h.step(admit=lambda: asked.append(1) or (True, ""))
    assert asked == [] and h.status["phase"] == "Suspended"


