"""A de-duplicating work queue for reconciles (client-go's workqueue, in a few lines).

- A key is queued at most once: a burst of events for one run costs one reconcile.
- A key is handed to one worker at a time: added again while a worker holds it, it is queued once more
  when that worker calls `done` (the reconcile then sees everything that happened meanwhile).
- Priority lanes, each first in, first out: NEW (runs never reconciled) before EVENT (something happened:
  a Job finished, a spec changed) before LATER (resyncs, retries, TTLs). A thousand runs applied at once get
  their first Jobs before the status churn of their own Jobs is looked at, and a resync of idle runs never
  delays the next stage of a busy one.
- Weighted fairness, so no lane starves: a lane with waiting keys is passed over at most `patience` times
  in a row (default 8), then it gets the next hand-out. A steady stream of events delays a retry, a deadline
  or a TTL by at most about `patience` reconciles, while a burst of new runs still gets 8 of every 9
  hand-outs. (Not aging by time: under a backlog longer than the age limit, aging serves every lane first
  in, first out, and a thousand new runs would wait behind the deferred work of those before them.)
- `add_after` queues a key later (deadlines, TTLs). One pending delayed add per key: a second one keeps the
  earlier due time (a run reconciled a hundred times before its deadline holds one entry, not a hundred).
- `add_rate_limited` queues a key after a per-key exponential back-off (`retry`: 0.5 s doubling to 30 s);
  `forget` resets it after a success (client-go's RateLimitingQueue).
- `observe_wait(lane, seconds)`, if given, hears how long each key waited (for metrics).
- `stalled(seconds)` says why the workers look wedged (the liveness probe): a key held by a worker that long,
  or keys waiting that long while none was handed out.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

from .ratelimit import ExponentialBackoff

NEW, EVENT, LATER = 0, 1, 2
PATIENCE = 8
"""Hand-outs a lane with waiting keys can be passed over in a row."""


class WorkQueue:
    def __init__(self, observe_wait: Callable[[int, float], None] | None = None, *, patience: int = PATIENCE,
                 retry: tuple[float, float] = (0.5, 30.0), clock: Callable[[], float] = time.monotonic) -> None:
        self._observe_wait = observe_wait
        self._patience = max(1, patience)
        self._passed = [0, 0, 0]
        """Hand-outs in a row that went to another lane while this one had waiting keys."""
        self._backoff = ExponentialBackoff(*retry)
        self._clock = clock
        """Monotonic seconds (tests pass a fake one to age keys without sleeping)."""
        self._cond = threading.Condition()
        self._lanes: tuple[deque[Hashable], ...] = (deque(), deque(), deque())
        self._queued: dict[Hashable, int] = {}
        """key -> the lane it waits in (a lane may hold stale entries of keys promoted or handed out)."""
        self._waiting = [0, 0, 0]
        """Keys waiting per lane (the lanes' deques also hold stale entries)."""
        self._since: dict[Hashable, float] = {}
        self._active: dict[Hashable, float] = {}
        """Keys handed out and not done yet -> when they were handed out."""
        self._handed_out = clock()
        """When a key was last handed out (or `progressed` was called)."""
        self._again: dict[Hashable, int] = {}
        """Keys added while active -> the lane to queue them in when done."""
        self._later: list[tuple[float, int, Hashable]] = []
        self._due: dict[Hashable, tuple[float, int]] = {}
        """key -> (due, seq) of its one entry in `_later`."""
        self._seq = itertools.count()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._queued)

    def waiting(self, lane: int) -> int:
        """How many keys wait in that lane."""
        return self._waiting[lane]  # one read of an int: no lock needed

    def add(self, key: Hashable, lane: int = EVENT) -> None:
        with self._cond:
            if self._closed:
                return
            if key in self._active:
                self._again[key] = min(lane, self._again.get(key, LATER))
                return
            self._push(key, lane)

    def add_after(self, key: Hashable, seconds: float) -> None:
        """Queue key (LATER lane) in `seconds`, unless it is already due to be queued sooner."""
        with self._cond:
            if self._closed:
                return
            due = self._clock() + max(0.0, seconds)
            current = self._due.get(key)
            if current is not None:
                if current[0] <= due:
                    return
                self._later.remove((*current, key))  # O(n), and only when a due time moves earlier
                heapq.heapify(self._later)
            entry = (due, next(self._seq))
            self._due[key] = entry
            heapq.heappush(self._later, (*entry, key))
            self._cond.notify()

    def delayed(self) -> int:
        """How many keys wait for a delayed add (one entry each)."""
        with self._cond:
            return len(self._later)

    def add_rate_limited(self, key: Hashable) -> float:
        """Queue key after its back-off (a failure counted); returns the delay."""
        delay = self._backoff.when(key)
        self.add_after(key, delay)
        return delay

    def forget(self, key: Hashable) -> None:
        """Reset key's back-off (its work succeeded, or it is gone)."""
        self._backoff.forget(key)

    def retries(self, key: Hashable) -> int:
        """Failures counted for key since it was last forgotten."""
        return self._backoff.failures(key)

    def get(self, timeout: float | None = None) -> Hashable | None:
        """The next key (the caller must call `done(key)`), or None when closed or after `timeout`."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while not self._closed:
                now = self._clock()
                while self._later and self._later[0][0] <= now:
                    key = heapq.heappop(self._later)[2]
                    del self._due[key]
                    if key in self._active:
                        self._again.setdefault(key, LATER)
                    else:
                        self._push(key, LATER, notify=False)
                popped = self._pop()
                if popped is not None:
                    key, lane = popped
                    self._active[key] = self._handed_out = now
                    waited = now - self._since.pop(key, now)
                    break
                waits = [t - now for t in (deadline, self._later[0][0] if self._later else None) if t is not None]
                if deadline is not None and now >= deadline:
                    return None
                self._cond.wait(max(0.0, min(waits)) if waits else None)
            else:
                return None
        if self._observe_wait is not None:  # outside the lock: never call out while holding it
            self._observe_wait(lane, waited)
        return key

    def done(self, key: Hashable) -> None:
        with self._cond:
            self._active.pop(key, None)
            lane = self._again.pop(key, None)
            if lane is not None and not self._closed:
                self._push(key, lane)

    def progressed(self) -> None:
        """Count now as progress: the wait so far was not the workers' doing (they were paused on purpose)."""
        with self._cond:
            self._handed_out = self._clock()

    def stalled(self, seconds: float) -> str | None:
        """Why the workers look wedged, or None: a key held by a worker for more than `seconds` (a reconcile
        that never returns), or a key waiting more than `seconds` while no key was handed out in that time
        (every worker wedged, or gone)."""
        with self._cond:
            now = self._clock()
            held = min(self._active.values(), default=now)
            if now - held > seconds:
                return f"a worker has been on one key for {now - held:.0f} s"
            oldest = min(self._since.values(), default=now)
            if now - oldest > seconds and now - self._handed_out > seconds:
                return (f"{len(self._queued)} key(s) waiting, the oldest for {now - oldest:.0f} s, and none handed "
                        f"out for {now - self._handed_out:.0f} s")
            return None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- under the lock
    def _push(self, key: Hashable, lane: int, notify: bool = True) -> None:
        queued = self._queued.get(key)
        if queued is not None and queued <= lane:
            return  # already waiting, in this lane or a faster one
        if queued is not None:
            self._waiting[queued] -= 1
        self._waiting[lane] += 1
        self._queued[key] = lane
        self._since.setdefault(key, self._clock())
        self._lanes[lane].append(key)
        if notify:
            self._cond.notify()

    def _pop(self) -> tuple[Hashable, int] | None:
        heads: list[tuple[int, Hashable]] = []
        for lane, entries in enumerate(self._lanes):
            while entries and self._queued.get(entries[0]) != lane:
                entries.popleft()  # stale: promoted to a faster lane, or handed out
            if entries:
                heads.append((lane, entries[0]))
        if not heads:
            return None
        # the fastest lane, unless a lane has been passed over `patience` times (then the fastest such lane)
        live = [lane for lane, _ in heads]
        lane = next((ln for ln in live if self._passed[ln] >= self._patience), live[0])
        for other in range(len(self._lanes)):
            self._passed[other] = self._passed[other] + 1 if other in live and other != lane else 0
        key = self._lanes[lane].popleft()
        del self._queued[key]
        self._waiting[lane] -= 1
        return key, lane
