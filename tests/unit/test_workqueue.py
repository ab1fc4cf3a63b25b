"""The run controller's plumbing: the reconcile work queue (de-duplication, one worker per key, priority lanes,
delayed adds, close) and the background Event poster."""

from __future__ import annotations

import threading
import time

from synpo_operator.events import event_body
from synpo_operator.workqueue import EVENT, LATER, NEW, WorkQueue


def drain(q: WorkQueue) -> list:
    out = []
    while (key := q.get(timeout=0)) is not None:
        out.append(key)
        q.done(key)
    return out


def test_a_key_is_queued_once():
    q = WorkQueue()
    for key in ("a", "b", "a", "a", "c", "b"):
        q.add(key)
    assert len(q) == 3
    assert drain(q) == ["a", "b", "c"]
    assert len(q) == 0


def test_lanes_go_in_order_and_a_waiting_key_is_promoted():
    q = WorkQueue()
    q.add("resync-1", LATER)
    q.add("resync-2", LATER)
    q.add("job-event", EVENT)
    q.add("new", NEW)
    q.add("resync-2", NEW)  # promoted: handed out once, before everything else
    q.add("job-event", LATER)  # never demoted
    assert drain(q) == ["new", "resync-2", "job-event", "resync-1"]


def test_waiting_counts_keys_per_lane_through_promotion_and_hand_out():
    q = WorkQueue()
    for key in ("a", "b", "c"):
        q.add(key, LATER)
    q.add("b", NEW)  # promoted: counted once, in its new lane
    q.add("d", EVENT)
    assert [q.waiting(lane) for lane in (NEW, EVENT, LATER)] == [1, 1, 2]
    held = q.get(timeout=0)
    assert held == "b" and q.waiting(NEW) == 0
    q.add("b", NEW)  # held by a worker: not waiting until done
    assert q.waiting(NEW) == 0
    q.done("b")
    assert q.waiting(NEW) == 1
    drain(q)
    assert [q.waiting(lane) for lane in (NEW, EVENT, LATER)] == [0, 0, 0]


def test_a_key_added_while_held_is_handed_out_again_after_done():
    q = WorkQueue()
    q.add("run")
    key = q.get(timeout=0)
    q.add("run")
    q.add("run")
    assert q.get(timeout=0) is None  # never two workers on one key
    q.done(key)
    assert q.get(timeout=0) == "run"
    q.done("run")
    assert q.get(timeout=0) is None


def test_add_after_waits_then_hands_out():
    q = WorkQueue()
    q.add_after("later", 0.15)
    assert q.get(timeout=0.01) is None
    start = time.monotonic()
    assert q.get(timeout=2) == "later"
    assert time.monotonic() - start < 1.5


def test_delayed_key_held_by_a_worker_is_queued_after_done():
    q = WorkQueue()
    q.add("k")
    assert q.get(timeout=0) == "k"
    q.add_after("k", 0)
    assert q.get(timeout=0.05) is None
    q.done("k")
    assert q.get(timeout=0) == "k"


def test_close_wakes_blocked_workers():
    q = WorkQueue()
    got = []
    workers = [threading.Thread(target=lambda: got.append(q.get())) for _ in range(3)]
    for w in workers:
        w.start()
    q.close()
    for w in workers:
        w.join(2)
    assert got == [None, None, None]
    q.add("x")
    assert q.get(timeout=0) is None


def test_many_workers_never_share_a_key():
    q = WorkQueue()
    holders: dict[str, int] = {}
    clash = []
    lock = threading.Lock()

    def work():
        while (key := q.get(timeout=0.3)) is not None:
            with lock:
                holders[key] = holders.get(key, 0) + 1
                clash.append(holders[key] > 1)
            time.sleep(0.001)
            with lock:
                holders[key] -= 1
            q.done(key)

    workers = [threading.Thread(target=work) for _ in range(8)]
    for w in workers:
        w.start()
    for i in range(2000):
        q.add(f"run-{i % 20}", i % 3)
    for w in workers:
        w.join(10)
    assert not any(clash)
    assert len(q) == 0


def test_event_body_names_the_object_and_clips_the_message():
    run = {"apiVersion": "synpo.dev/v1alpha1", "kind": "SynPORun",
           "metadata": {"name": "demo", "namespace": "ml", "uid": "u-1"}}
    body = event_body(run, "Warning", "StageFailed", "x" * 5000, "2026-11-26T12:00:00Z")
    assert body["metadata"]["namespace"] == "ml" and body["metadata"]["name"].startswith("demo.")
    assert body["involvedObject"] == {"apiVersion": "synpo.dev/v1alpha1", "kind": "SynPORun", "name": "demo",
                                      "namespace": "ml", "uid": "u-1"}
    assert body["type"] == "Warning" and body["reason"] == "StageFailed" and len(body["message"]) == 1024
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2026-11-26T12:00:00Z"


def test_wait_times_are_reported_per_lane():
    waits = []
    q = WorkQueue(observe_wait=lambda lane, seconds: waits.append((lane, seconds)))
    q.add("a", LATER)
    q.add("a", NEW)  # promoted: measured from the first add
    time.sleep(0.05)
    assert q.get(timeout=0) == "a"
    assert waits[0][0] == NEW and 0.04 <= waits[0][1] < 5


def test_event_poster_posts_in_order_and_flushes():
    from synpo_operator.events import EventPoster

    sent = []
    poster = EventPoster(send=lambda body: sent.append(body["reason"]))
    run = {"apiVersion": "synpo.dev/v1alpha1", "kind": "SynPORun", "metadata": {"name": "r", "namespace": "ns"}}
    for reason in ("StageStarted", "StageSucceeded", "RunSucceeded"):
        poster.post(run, "Normal", reason, "m")
    poster.flush()
    assert sent == ["StageStarted", "StageSucceeded", "RunSucceeded"]


def test_event_poster_holds_events_while_told_to_but_not_past_the_limit(monkeypatch):
    from synpo_operator import events
    from synpo_operator.events import EventPoster

    sent = []
    hold = threading.Event()
    hold.set()
    poster = EventPoster(send=lambda body: sent.append(body["reason"]), hold=hold.is_set)
    run = {"metadata": {"name": "r", "namespace": "ns"}}
    poster.post(run, "Normal", "StageStarted", "m")
    time.sleep(0.3)
    assert sent == []  # held: new runs wait for their first Jobs
    hold.clear()
    poster.flush()
    assert sent == ["StageStarted"]

    monkeypatch.setattr(events, "HOLD_SECONDS", 0.2)
    hold.set()  # held for ever: an Event still goes after HOLD_SECONDS
    poster.post(run, "Normal", "RunSucceeded", "m")
    poster.flush(timeout=5)
    assert sent == ["StageStarted", "RunSucceeded"]


def test_event_poster_survives_a_failing_api():
    from synpo_operator.events import EventPoster

    calls = []

    def send(body):
        calls.append(body["reason"])
        raise OSError("API server unreachable")

    poster = EventPoster(send=send)
    run = {"metadata": {"name": "r", "namespace": "ns"}}
    poster.post(run, "Warning", "A", "m")
    poster.post(run, "Warning", "B", "m")
    poster.flush()
    assert calls == ["A", "B"]
