"""Rate limiters (client-go's `flowcontrol` and `workqueue` limiters, in a few lines; stdlib only).

- `TokenBucket`: the client-side QPS and burst limit toward the API server (`kube.request` takes a token
  before every call): up to `burst` requests at once, then `qps` a second.
- `ExponentialBackoff`: per-key retry delays for the work queue's rate-limited adds: `base * 2**failures`,
  capped, reset by `forget` after a success.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable


class TokenBucket:
    """A token bucket that hands out reservations: a caller that finds the bucket empty still takes a token
    (the level goes below zero) and sleeps until it is due, so waiting callers are served in arrival order
    at exactly `qps`, and none can starve."""

    def __init__(self, qps: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if qps <= 0:
            raise ValueError(f"qps must be > 0 (got {qps}); use no limiter for no limit")
        self.qps = float(qps)
        self.burst = max(1, int(burst))
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(self.burst)
        self._stamp = clock()

    def reserve(self) -> float:
        """Take a token; returns how many seconds the caller must wait before using it (0: now)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.qps)
            self._stamp = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def take(self) -> float:
        """Take a token, sleeping until it is due; returns the seconds slept."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait


class ExponentialBackoff:
    """Per-key failure counts and the delay before the next try: `base`, doubling per failure, at most
    `cap` (client-go's ItemExponentialFailureRateLimiter)."""

    def __init__(self, base: float = 0.5, cap: float = 30.0):
        if base <= 0 or cap < base:
            raise ValueError(f"need 0 < base <= cap (got base={base}, cap={cap})")
        self.base, self.cap = base, cap
        self._failures: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def when(self, key: Hashable) -> float:
        """Count a failure of key; the delay before its next try."""
        with self._lock:
            n = self._failures.get(key, 0)
            self._failures[key] = n + 1
        return min(self.cap, self.base * 2.0 ** min(n, 64))

    def failures(self, key: Hashable) -> int:
        with self._lock:
            return self._failures.get(key, 0)

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._failures.pop(key, None)
