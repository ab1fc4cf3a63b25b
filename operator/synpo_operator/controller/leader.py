"""Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it.

Every replica runs an elector. The holder renews the Lease every `renew_seconds`; a standby takes the Lease
over when its record has not changed for `lease_seconds` (measured on the standby's own monotonic clock, as
client-go does, so clock skew between nodes does not matter). Every write carries the resourceVersion it
was computed from: of two standbys racing for an expired Lease, one wins and the other gets 409 Conflict.
A leader that cannot renew for `lease_seconds - renew_seconds` stops leading before any standby may take over
(`on_lost`: it stands by, and leads again once it holds the Lease again, e.g. after an API server restart); one
that shuts down cleanly releases the Lease so a standby takes over at once. What a leader that just stepped
down still has in flight is harmless: Job creates are create-if-absent and status writes carry a
resourceVersion.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .. import kube

log = logging.getLogger("synpo.leader")


def _micro_time(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return f"{base}/{name}" if name else base


class LeaderElector:
    def __init__(self, *, name: str, namespace: str, identity: str, lease_seconds: float = 15.0,
                 renew_seconds: float = 5.0, on_started: Callable[[], None], on_lost: Callable[[], None],
                 request: Callable[..., Any] = kube.request, monotonic: Callable[[], float] = time.monotonic):
        if renew_seconds >= lease_seconds:
            raise ValueError("renew_seconds must be shorter than lease_seconds")
        self.name, self.namespace, self.identity = name, namespace, identity
        self.lease_seconds, self.renew_seconds = lease_seconds, renew_seconds
        self.on_started, self.on_lost = on_started, on_lost
        self._request, self._monotonic = request, monotonic
        self.leading = False
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0
        self._stop = threading.Event()

    # ---- one attempt ---------------------------------------------------------------------------------
    def _spec(self, old: dict[str, Any] | None, transitions: int) -> dict[str, Any]:
        now = _micro_time()
        keep = old if old and old.get("holderIdentity") == self.identity else None
        return {"holderIdentity": self.identity, "leaseDurationSeconds": int(round(self.lease_seconds)),
                "acquireTime": (keep or {}).get("acquireTime") or now, "renewTime": now,
                "leaseTransitions": transitions}

    def try_acquire_or_renew(self) -> bool:
        """One round: True when this replica holds the Lease afterwards."""
        now = self._monotonic()
        try:
            lease = self._request("GET", lease_path(self.namespace, self.name))
        except kube.KubeError as err:
            if not err.not_found:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(None, 0)}
            try:
                self._request("POST", lease_path(self.namespace), body)
            except kube.KubeError as err2:
                if err2.conflict:
                    return False  # another replica created it first
                raise
            return True
        spec = lease.get("spec") or {}
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed, self._observed_at = record, now
        holder = spec.get("holderIdentity")
        duration = float(spec.get("leaseDurationSeconds") or self.lease_seconds)
        if holder and holder != self.identity and now - self._observed_at < duration:
            return False  # held by another replica that renewed recently
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        lease["spec"] = self._spec(spec, transitions)
        try:
            self._request("PUT", lease_path(self.namespace, self.name), lease)  # carries its resourceVersion
        except kube.KubeError as err:
            if err.conflict:
                return False  # someone else wrote it since our GET
            raise
        return True

    # ---- the loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        """Until stopped: acquire, then renew; on_started each time it starts leading, on_lost each time it stops."""
        while not self._stop.is_set():
            try:
                held = self.try_acquire_or_renew()
            except Exception as err:  # noqa: BLE001 - the API server may be away for a while: try again
                log.warning("lease %s/%s: %s", self.namespace, self.name, err)
                held = False
            now = self._monotonic()
            if held:
                self._renewed_at = now
                if not self.leading:
                    self.leading = True
                    log.info("%s acquired lease %s/%s", self.identity, self.namespace, self.name)
                    self.on_started()
            elif self.leading and (now - self._renewed_at >= self.lease_seconds - self.renew_seconds
                                   or (self._observed and self._observed[0] not in (None, "", self.identity))):
                # stop before a standby may take over (it waits a whole lease_seconds), or at once when one has;
                # then stand by, and lead again when the Lease is ours again (an API server restart)
                self.leading = False
                log.error("%s lost lease %s/%s", self.identity, self.namespace, self.name)
                self.on_lost()
            self._stop.wait(self.renew_seconds if self.leading else self.renew_seconds / 2)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True, name="synpo-leader")
        thread.start()
        return thread

    def release(self) -> None:
        """Stop, and when leading, hand the Lease over at once (a standby need not wait it out)."""
        self._stop.set()
        if not self.leading:
            return
        self.leading = False
        try:
            lease = self._request("GET", lease_path(self.namespace, self.name))
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"] = {**lease["spec"], "holderIdentity": None, "leaseDurationSeconds": 1,
                                 "renewTime": _micro_time()}
                self._request("PUT", lease_path(self.namespace, self.name), lease)
        except Exception as err:  # noqa: BLE001 - the Lease expires on its own
            log.warning("could not release lease %s/%s: %s", self.namespace, self.name, err)
