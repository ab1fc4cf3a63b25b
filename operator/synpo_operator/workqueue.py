"""A de-duplicating work queue for reconciles (client-go's workqueue, in a few lines).

- A key is queued at most once: a burst of events for one run costs one reconcile.
- A key is handed to one worker at a time: added again while a worker holds it, it is queued once more
  when that worker calls `done` (the reconcile then sees everything that happened meanwhile).
- Priority lanes, each first in, first out: NEW (runs never reconciled) before EVENT (something happened:
  a Job finished, a spec changed) before LATER (resyncs, retries, TTLs). A thousand runs applied at once get
  their first Jobs before the status churn of their own Jobs is looked at, and a resync of idle runs never
  delays the next stage of a busy one.
- `add_after` queues a key later (retries with back-off).
- `observe_wait(lane, seconds)`, if given, hears how long each key waited (for metrics).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

NEW, EVENT, LATER = 0, 1, 2


class WorkQueue:
    def __init__(self, observe_wait: Callable[[int, float], None] | None = None) -> None:
        self._observe_wait = observe_wait
        self._cond = threading.Condition()
        self._lanes: tuple[deque[Hashable], ...] = (deque(), deque(), deque())
        self._queued: dict[Hashable, int] = {}
        """key -> the lane it waits in (a lane may hold stale entries of keys promoted or handed out)."""
        self._waiting = [0, 0, 0]
        """Keys waiting per lane (the lanes' deques also hold stale entries)."""
        self._since: dict[Hashable, float] = {}
        self._active: set[Hashable] = set()
        self._again: dict[Hashable, int] = {}
        """Keys added while active -> the lane to queue them in when done."""
        self._later: list[tuple[float, int, Hashable]] = []
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
        with self._cond:
            heapq.heappush(self._later, (time.monotonic() + max(0.0, seconds), next(self._seq), key))
            self._cond.notify()

    def get(self, timeout: float | None = None) -> Hashable | None:
        """The next key (the caller must call `done(key)`), or None when closed or after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                while self._later and self._later[0][0] <= now:
                    key = heapq.heappop(self._later)[2]
                    if key in self._active:
                        self._again.setdefault(key, LATER)
                    else:
                        self._push(key, LATER, notify=False)
                popped = self._pop()
                if popped is not None:
                    key, lane = popped
                    self._active.add(key)
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
            self._active.discard(key)
            lane = self._again.pop(key, None)
            if lane is not None and not self._closed:
                self._push(key, lane)

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
        self._since.setdefault(key, time.monotonic())
        self._lanes[lane].append(key)
        if notify:
            self._cond.notify()

    def _pop(self) -> tuple[Hashable, int] | None:
        for lane, entries in enumerate(self._lanes):
            while entries:
                key = entries.popleft()
                if self._queued.get(key) == lane:  # else stale: promoted to a faster lane, or handed out
                    del self._queued[key]
                    self._waiting[lane] -= 1
                    return key, lane
        return None
