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


# ---- fairness, delayed-add de-duplication, back-off in the queue (issue 16 item 7) ----------------------

class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_steady_stream_of_events_does_not_starve_the_later_lane():
    q = WorkQueue(patience=4)
    q.add("retry", LATER)
    handed = []
    for i in range(20):  # always an event waiting: strict priority would never reach the LATER lane
        q.add(f"event-{i}", EVENT)
        key = q.get(timeout=0)
        handed.append(key)
        q.done(key)
    assert handed.index("retry") == 4  # passed over 4 times, then handed out
    assert [k for k in handed if k != "retry"] == [f"event-{i}" for i in range(19)]  # events stay in order


def test_every_lane_gets_a_share_under_a_burst_of_new_runs():
    q = WorkQueue(patience=8)
    for i in range(100):
        q.add(f"new-{i}", NEW)
    for i in range(10):
        q.add(f"event-{i}", EVENT)
        q.add(f"later-{i}", LATER)
    first_40 = [q.get(timeout=0) for _ in range(40)]
    for key in first_40:
        q.done(key)
    lanes = [k.split("-")[0] for k in first_40]
    assert lanes.count("new") >= 30  # the burst keeps most hand-outs
    assert lanes.count("event") >= 3 and lanes.count("later") >= 3  # and neither other lane waits for its end
    gaps = [b - a for a, b in zip([i for i, ln in enumerate(lanes) if ln == "later"][:-1],
                                  [i for i, ln in enumerate(lanes) if ln == "later"][1:], strict=True)]
    assert max(gaps) <= 10  # at most patience + 2 hand-outs between two of a waiting lane


def test_lanes_keep_their_priority_while_no_lane_has_waited_long():
    q = WorkQueue(patience=8)
    q.add("later", LATER)
    q.add("event", EVENT)
    for i in range(3):
        q.add(f"new-{i}", NEW)
    assert drain(q) == ["new-0", "new-1", "new-2", "event", "later"]


def test_delayed_adds_keep_one_entry_per_key_with_the_earliest_due_time():
    clock = FakeClock()
    q = WorkQueue(clock=clock)
    for i in range(100):  # a run reconciled 100 times before its deadline, each asking to be woken then
        q.add_after("deadline", 60 - i * 0.001)
    q.add_after("other", 30)
    assert q.delayed() == 2
    q.add_after("deadline", 5)  # sooner: replaces the entry
    q.add_after("deadline", 50)  # later than the pending one: ignored
    assert q.delayed() == 2
    clock.t += 4.9
    assert q.get(timeout=0) is None
    clock.t += 0.2
    assert drain(q) == ["deadline"]
    assert q.delayed() == 1
    clock.t += 100  # the ignored later add was not kept either: only "other" comes
    assert drain(q) == ["other"]
    assert q.delayed() == 0
    q.add_after("deadline", 1)  # handed out: a new delayed add counts again
    assert q.delayed() == 1


def test_rate_limited_adds_back_off_per_key_and_forget_resets():
    clock = FakeClock()
    q = WorkQueue(clock=clock, retry=(0.5, 4.0))
    delays = [q.add_rate_limited("a") for _ in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]  # doubling, capped
    assert q.retries("a") == 6 and q.retries("b") == 0
    assert q.add_rate_limited("b") == 0.5  # per key
    assert q.delayed() == 2  # one pending entry per key (the earliest: 0.5 s)
    clock.t += 0.4
    assert q.get(timeout=0) is None  # not before its back-off
    clock.t += 0.2
    assert sorted(drain(q)) == ["a", "b"]
    q.forget("a")
    assert q.retries("a") == 0
    assert q.add_rate_limited("a") == 0.5


def test_the_controller_retries_a_failing_reconcile_with_the_queues_back_off():
    from synpo_operator.controller.runs import RunController
    from synpo_operator.controller.settings import Settings
    from synpo_operator.events import EventPoster
    from synpo_operator.metrics import Metrics

    controller = RunController(Settings(), Metrics(), EventPoster())
    q = controller.queue = WorkQueue(retry=(0.05, 1.0))
    calls: list[float] = []
    seen_retries: list[int] = []

    def reconcile_now(namespace, name):
        calls.append(time.monotonic())
        seen_retries.append(q.retries((namespace, name)))
        if len(calls) < 4:
            raise OSError("API server unreachable")
        return None

    controller.reconcile_now = reconcile_now
    controller.active.set()
    worker = threading.Thread(target=controller._work, daemon=True)
    worker.start()
    q.add(("ns", "run"))
    deadline = time.monotonic() + 5
    while len(calls) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    q.close()
    worker.join(2)
    assert len(calls) == 4
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert [round(g, 2) >= d for g, d in zip(gaps, (0.05, 0.1, 0.2), strict=True)] == [True] * 3
    assert seen_retries == [0, 1, 2, 3]
    assert q.retries(("ns", "run")) == 0  # forgotten after the success


def test_stalled_names_a_key_held_too_long_and_keys_waiting_with_no_hand_out():
    clock = FakeClock()
    q = WorkQueue(clock=clock)
    assert q.stalled(60) is None
    q.add("wedged")
    assert q.get(timeout=0) == "wedged"  # a worker takes it and never calls done
    q.add("other")
    clock.t += 30
    assert q.get(timeout=0) == "other"  # another worker keeps going ...
    q.done("other")
    clock.t += 31
    assert "on one key for 61 s" in q.stalled(60)  # ... but the wedged key's run is never reconciled again
    q.done("wedged")
    assert q.stalled(60) is None
    # every worker gone or wedged: keys wait and nothing is handed out
    q.add("a")
    clock.t += 59
    assert q.stalled(60) is None
    clock.t += 2
    assert "1 key(s) waiting, the oldest for 61 s, and none handed out for 92 s" in q.stalled(60)
    q.progressed()  # e.g. the workers were paused on purpose until now
    assert q.stalled(60) is None
    assert q.get(timeout=0) == "a"
    q.done("a")
    clock.t += 1000
    assert q.stalled(60) is None  # idle: nothing waits, nothing held
