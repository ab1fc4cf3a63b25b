"""The operator process assembled: a RunController and a ScheduleController, joined by the concurrent-run
caps (`capacity.CapacityIndex`) through callbacks, and gated by leader election."""

from __future__ import annotations

import logging
import threading
from typing import Any

from .. import kube
from ..capacity import CapacityIndex, RunSlot
from ..events import EVENTS, EventPoster
from ..metrics import METRICS, Metrics
from .runs import Body, RunController
from .schedules import ScheduleController
from .settings import Settings

log = logging.getLogger("synpo.operator")


class Operator:
    def __init__(self, settings: Settings, metrics: Metrics = METRICS, events: EventPoster = EVENTS):
        self.settings = settings
        self.metrics = metrics
        metrics.set_leader(settings.identity, not settings.leader_election)  # with election: standby until elected
        self.capacity = CapacityIndex(settings.caps)
        """Slot state of every watched run (concurrent-run caps; also tells schedules when their runs change)."""
        self.leader = threading.Event()
        """Set while this replica holds the Lease (always, without leader election)."""
        limited = settings.caps.limited
        self.runs = RunController(settings, metrics, events, observe_run=self.observe_run,
                                  run_gone=self.run_gone,
                                  admit=self.capacity.admit if limited else None)
        self.schedules = ScheduleController(
            settings, metrics, events, runs_of=self.runs.runs_of_schedule, observe_run=self.schedule_created,
            capacity_left=self.capacity.capacity_left if limited else None,
            capacity_lock=threading.Lock() if limited else None, leading=self.leader.is_set)

    # ---- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Informers on every replica (warm standby; /readyz); reconciling once this replica leads."""
        kube.api_client()
        self.runs.start_informers()
        log.info("informers synced (executor=%s, workers=%s, resync=%ss, max active runs=%s, per namespace=%s)",
                 self.settings.executor, self.settings.workers, self.settings.resync_seconds,
                 self.settings.caps.max_active or "unlimited", self.settings.caps.max_per_namespace or "unlimited")

    def lead(self) -> None:
        """This replica leads from now on: reconcile every run the informers queued, step every schedule."""
        log.info("%s leads: reconciling runs and schedules", self.settings.identity)
        self.leader.set()
        self.metrics.set_leader(self.settings.identity, True)
        self.runs.resume()
        for scope in self.settings.scopes:  # a takeover: schedules step now, not at their next timer tick
            try:
                schedules = kube.list_schedules(scope)
            except kube.KubeError as err:
                log.warning("could not list schedules: %s", err)
                continue
            for body in schedules:
                meta = body.get("metadata") or {}
                if self.settings.watched(meta.get("namespace", "")):
                    self.schedules.nudge(meta["namespace"], meta["name"], "this replica leads")

    def follow(self) -> None:
        """Another replica may lead now (this one could not renew the Lease): stand by until it leads again."""
        log.warning("%s no longer leads: standing by", self.settings.identity)
        self.leader.clear()
        self.runs.pause()
        self.metrics.set_leader(self.settings.identity, False)

    def stop(self) -> None:
        self.leader.clear()
        self.runs.stop()
        self.runs.events.flush()

    def ready(self) -> bool:
        """Ready once the informers have listed (a standby is ready too: it takes over with a warm cache)."""
        return self.runs.synced

    # ---- capacity glue -------------------------------------------------------------------------------
    def observe_run(self, body: Any) -> None:
        """Record a run's latest known state in the capacity index and react to what changed."""
        if not body or not (body.get("metadata") or {}).get("name"):
            return
        old, new = self.capacity.update(body)
        self._slot_changed(old, new)

    def schedule_created(self, body: Body) -> None:
        """A schedule created this run: the informer has it before the watch does (no duplicate step)."""
        cache = kube.informer("runs", (body.get("metadata") or {}).get("namespace", ""))
        if cache is not None:
            cache.put(body)
        self.observe_run(body)

    def run_gone(self, namespace: str, name: str) -> None:
        self._slot_changed(self.capacity.forget(namespace, name), None)

    def _slot_changed(self, old: RunSlot | None, new: RunSlot | None) -> None:
        """A run appeared, changed phase or slot state, or went away: nudge its schedule, and when a slot
        freed up, the waiting runs that may start now (the resync would, later)."""
        if old is not None and new is not None and (old.phase, old.state) == (new.phase, new.state):
            return
        slot = new or old
        assert slot is not None
        if slot.schedule and self.leader.is_set():
            self.schedules.nudge(slot.namespace, slot.schedule,
                                 f"run {slot.name} is {new.phase if new else 'gone'}")
        freed = old is not None and old.state == "active" and (new is None or new.state != "active")
        if freed and self.settings.caps.limited:
            for namespace, name in self.capacity.admissible():
                self.runs.trigger(namespace, name, "a run slot freed up")
            if self.leader.is_set():
                self.schedules.nudge_blocked()
