"""Liveness (issue 20): kopf's /healthz, the endpoint the chart's livenessProbe reads, fails while a run worker
is wedged, and only then: the real kopf health server with the operator's probe handlers, a real RunController
whose one worker is stuck in a reconcile that never returns, and the queue's clock moved on instead of waiting
five minutes."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import kopf
import pytest
from kopf._cogs.structs import ephemera
from kopf._core.engines import indexing, probing  # the health server kopf.run starts, on its own

from synpo_operator.controller.app import Operator
from synpo_operator.controller.kopf_app import registry
from synpo_operator.controller.settings import Settings
from synpo_operator.events import EventPoster
from synpo_operator.metrics import Metrics
from synpo_operator.workqueue import WorkQueue

from .test_workqueue import FakeClock

STALL = 300.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def operator():
    op = Operator(Settings(workers=1, stall_seconds=STALL, leader_election=False), Metrics(),
                  EventPoster(send=lambda body: None))
    op.runs.queue = WorkQueue(clock=FakeClock())
    yield op
    op.runs._stopping.set()
    op.runs.queue.close()
    op.runs.active.set()


@pytest.fixture
def healthz(operator):
    """kopf's liveness endpoint serving the operator's probe handlers; yields a GET -> (status, body)."""
    url = f"http://127.0.0.1:{_free_port()}/healthz"
    started, stop = threading.Event(), None
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        nonlocal stop
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(probing.health_reporter(
            url, memo=ephemera.AnyMemo(ephemera.Memo()), indices=indexing.OperatorIndexers().indices,
            registry=registry(operator), settings=kopf.OperatorSettings(), ready_flag=ready))
        await ready.wait()
        started.set()
        await stop.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10)

    def get() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    yield get
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)


def test_a_wedged_run_worker_fails_liveness_until_it_is_unstuck(operator, healthz):
    runs, clock = operator.runs, operator.runs.queue._clock
    entered, release = threading.Event(), threading.Event()

    def reconcile_now(namespace, name):  # an API call that never returns (no timeout), say
        entered.set()
        assert release.wait(30)

    runs.reconcile_now = reconcile_now
    runs.resume()  # this replica leads: the worker starts
    runs.trigger("ns", "run-a")
    assert entered.wait(10)
    runs.trigger("ns", "run-b")  # queued behind the wedged worker
    clock.t += STALL - 1
    assert runs.stalled() is None  # a slow reconcile is not yet a wedged one
    clock.t += 2
    status, body = healthz()
    assert status == 500, body
    assert runs.stalled() == "a worker has been on one key for 301 s"

    release.set()  # the worker comes back, and takes run-b
    done = threading.Event()
    runs.reconcile_now = lambda namespace, name: done.set()
    assert done.wait(10)
    deadline = time.monotonic() + 10
    while runs.queue._active and time.monotonic() < deadline:  # until the worker calls done
        time.sleep(0.01)
    assert runs.stalled() is None
    status, body = healthz()
    assert status == 200 and json.loads(body)["runQueue"] == 0, body


def test_a_standby_with_a_long_queue_is_alive(operator, healthz):
    """A follower's workers are paused on purpose: what queues meanwhile is no sign of a wedged worker."""
    operator.runs.trigger("ns", "run-a")
    operator.runs.queue._clock.t += 10 * STALL
    status, body = healthz()
    assert status == 200 and json.loads(body)["runQueue"] == 1, body
