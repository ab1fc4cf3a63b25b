"""Kubernetes Events about SynPORuns and SynPOSchedules, posted by one background thread.

Reconciles only queue an Event (a dict append): they never wait on the API server for it, and a burst of
Events never holds up the status writes. The queue is bounded; beyond it Events are logged and dropped
(they are informational: the status carries the same facts). While `hold()` says so (new runs wait for
their first Jobs), an Event waits, up to HOLD_SECONDS after it was queued: during a burst of new runs the
API server's time goes to their Jobs first.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from . import clock, kube

COMPONENT = "synpo-operator"
MAX_QUEUED = 10_000
MESSAGE_LIMIT = 1024
HOLD_SECONDS = 10.0

log = logging.getLogger("synpo.events")


def event_body(obj: dict[str, Any], type_: str, reason: str, message: str, now: str) -> dict[str, Any]:
    """A core/v1 Event about obj (pure)."""
    meta = obj.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta.get('name', 'unknown')}.{uuid.uuid4().hex[:16]}",
                     "namespace": meta.get("namespace") or "default"},
        "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta.get("name"),
                           "namespace": meta.get("namespace"), "uid": meta.get("uid")},
        "type": type_,
        "reason": reason,
        "message": message[:MESSAGE_LIMIT],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


class EventPoster:
    def __init__(self, send: Callable[[dict[str, Any]], Any] | None = None,
                 hold: Callable[[], bool] | None = None):
        self._send = send or (lambda body: kube.request(
            "POST", f"/api/v1/namespaces/{body['metadata']['namespace']}/events", body))
        self.hold = hold
        self._queue: queue.Queue[tuple[float, dict[str, Any]] | threading.Event] = queue.Queue(MAX_QUEUED)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def post(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        body = event_body(obj, type_, reason, message, clock.rfc3339(clock.now()))
        self._ensure_thread()
        try:
            self._queue.put_nowait((time.monotonic(), body))
        except queue.Full:
            log.warning("event queue full; dropped %s %s: %s", type_, reason, message)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait (up to timeout) until the queued Events are posted."""
        done = threading.Event()
        self._ensure_thread()
        try:
            self._queue.put(done, timeout=timeout)  # a marker: set when everything before it is posted
        except queue.Full:
            return
        done.wait(timeout)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True, name="synpo-events")
                self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            queued_at, body = item
            while self.hold is not None and self.hold() and time.monotonic() - queued_at < HOLD_SECONDS:
                time.sleep(0.05)
            try:
                self._send(body)
            except Exception as err:  # noqa: BLE001 - Events are best effort
                log.info("could not post event %s on %s: %s", body["reason"],
                         body["involvedObject"].get("name"), err)


EVENTS = EventPoster()
