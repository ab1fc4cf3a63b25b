"""The client-side QPS/burst limit toward the API server and the per-key back-off (ratelimit.py)."""

from __future__ import annotations

import threading
import time

import pytest

from synpo_operator.ratelimit import ExponentialBackoff, TokenBucket


class Clock:
    """Fake monotonic time; `sleep` moves it."""

    def __init__(self) -> None:
        self.t = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


def test_token_bucket_allows_the_burst_then_spaces_requests_at_qps():
    clock = Clock()
    bucket = TokenBucket(10, 5, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        assert bucket.take() == 0.0  # the burst: at once
    waits = [bucket.take() for _ in range(10)]
    assert waits == pytest.approx([0.1] * 10)  # then one every 1/qps
    assert clock.t == pytest.approx(1.0)


def test_token_bucket_refills_while_idle_but_never_beyond_the_burst():
    clock = Clock()
    bucket = TokenBucket(10, 3, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        bucket.take()
    clock.t += 100  # idle for long: 3 tokens, not 1000
    assert [bucket.reserve() for _ in range(4)] == pytest.approx([0, 0, 0, 0.1])


def test_token_bucket_serves_waiting_callers_in_order_at_the_rate():
    clock = Clock()
    bucket = TokenBucket(2, 1, clock=clock, sleep=clock.sleep)
    # reservations queue up: each caller waits one 1/qps longer than the one before it
    assert [bucket.reserve() for _ in range(4)] == pytest.approx([0, 0.5, 1.0, 1.5])


def test_token_bucket_holds_many_threads_to_the_rate_in_real_time():
    bucket = TokenBucket(50, 5)
    start = time.monotonic()
    threads = [threading.Thread(target=lambda: [bucket.take() for _ in range(5)]) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    elapsed = time.monotonic() - start
    assert elapsed >= (25 - 5) / 50 * 0.95  # 25 requests: the burst of 5, then 20 at 50 a second


def test_token_bucket_refuses_a_rate_of_zero():
    with pytest.raises(ValueError, match="qps"):
        TokenBucket(0, 1)


def test_exponential_backoff_per_key():
    backoff = ExponentialBackoff(0.5, 30)
    assert [backoff.when("a") for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff.when("b") == 0.5 and backoff.failures("a") == 8
    backoff.forget("a")
    assert backoff.failures("a") == 0 and backoff.when("a") == 0.5
    with pytest.raises(ValueError):
        ExponentialBackoff(0, 1)
