"""The schedule controller: one pure step, `schedule.reconcile_schedule(body, runs, now=, capacity_left=)`,
run when Kopf says a schedule appeared, changed or its timer fired, or when one of its runs changed phase;
this module carries out its outcome: Replace-deletes, creates (409 is fine: names are deterministic), the
status (only when changed), the promotion verdict annotations, history pruning, Events and metrics.

A schedule's runs come from the runs informer (indexed by the `synpo.dev/schedule` label): no LIST per step.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import clock, kube
from ..api.conditions import CONCURRENCY_CAP, INVALID_SPEC, clip, invalid_spec_conditions, ready_reason
from ..api.loader import SpecError, parse_resource
from ..api.schedule import SynPOScheduleStatus
from ..events import EventPoster
from ..executors.job_status import owned_by
from ..metrics import Metrics
from ..reconcile import status_differs, status_patch
from ..schedule import PROMOTION_ANNOTATION, SCHEDULE_LABEL, ScheduleOutcome, reconcile_schedule
from .settings import Settings

log = logging.getLogger("synpo.operator")
Body = dict[str, Any]


@dataclass
class _Slot:
    """Coalescing state of one schedule: its steps run on Kopf's and our threads, never two at once."""

    guard: threading.Lock = field(default_factory=threading.Lock)
    running: bool = False
    again: bool = False


def _normalise(status: Body) -> Body:
    return SynPOScheduleStatus.model_validate({k: v for k, v in status.items() if v is not None}).to_api()


class ScheduleController:
    """Callbacks (injected by `app.Operator`): `runs_of(namespace, schedule)` the schedule's runs (from the
    informer; None: not available, then a LIST), `observe_run(body)` for each run created, `capacity_left(ns)`
    (None: no caps) and `capacity_lock` (held while capacity is read and a run created), `leading()` whether
    this replica may act."""

    def __init__(self, settings: Settings, metrics: Metrics, events: EventPoster, *,
                 runs_of: Callable[[str, str], list[Body] | None] = lambda namespace, schedule: None,
                 observe_run: Callable[[Body], None] = lambda body: None,
                 capacity_left: Callable[[str], int | None] | None = None,
                 capacity_lock: Any = None,
                 leading: Callable[[], bool] = lambda: True):
        self.settings = settings
        self.metrics = metrics
        self.events = events
        self.runs_of = runs_of
        self.observe_run = observe_run
        self.capacity_left = capacity_left
        self.capacity_lock = capacity_lock or contextlib.nullcontext()
        self.leading = leading
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._timers: dict[tuple[str, str], threading.Timer] = {}
        self._blocked: dict[tuple[str, str], str] = {}
        """Schedules and the reason of their last Ready condition (to nudge those waiting for a slot)."""
        self._guard = threading.Lock()

    # ---- triggers ------------------------------------------------------------------------------------
    def trigger(self, namespace: str, name: str, why: str) -> None:
        """Reconcile the schedule now, or once more after the step in progress."""
        if not self.leading():
            return
        with self._guard:
            slot = self._slots.setdefault((namespace, name), _Slot())
        self._coalesce(slot, lambda w: self.reconcile_now(namespace, name, w),
                       f"schedule step of {namespace}/{name}", why)

    def nudge(self, namespace: str, name: str, why: str) -> None:
        """`trigger` on a short-lived thread (a schedule step must not hold up the caller)."""
        threading.Thread(target=self.trigger, args=(namespace, name, why), daemon=True, name="synpo-nudge").start()

    def nudge_blocked(self) -> None:
        """A run slot freed up: the schedules that waited for one step again."""
        with self._guard:
            blocked = [k for k, reason in self._blocked.items() if reason == CONCURRENCY_CAP]
        for namespace, name in blocked:
            self.nudge(namespace, name, "a run slot freed up")

    def _coalesce(self, slot: _Slot, work: Any, what: str, why: str) -> None:
        """Run work(why) now, or once more after the call in progress (never two at once per slot)."""
        with slot.guard:
            if slot.running:
                slot.again = True
                return
            slot.running = True
        try:
            while True:
                with slot.guard:
                    slot.again = False
                try:
                    work(why)
                except Exception as err:  # noqa: BLE001 - counted, logged, retried by the next trigger or timer
                    self.metrics.error("schedule")
                    log.warning("%s failed (%s): %s", what, why, err)
                with slot.guard:
                    if not slot.again:
                        slot.running = False
                        return
                why = "coalesced trigger"
        except BaseException:
            with slot.guard:
                slot.running = False
            raise

    def forget(self, namespace: str, name: str) -> None:
        with self._guard:
            self._slots.pop((namespace, name), None)
            self._blocked.pop((namespace, name), None)
            timer = self._timers.pop((namespace, name), None)
        if timer is not None:
            timer.cancel()
        self.metrics.forget_schedule(namespace, name)

    def _requeue(self, namespace: str, name: str, seconds: float) -> None:
        """Look again at the next scheduled time when that comes before the next timer tick."""
        if seconds >= self.settings.resync_seconds:
            return
        key = (namespace, name)
        timer = threading.Timer(seconds, self.trigger, args=(namespace, name, "scheduled time"))
        timer.daemon = True
        with self._guard:
            previous = self._timers.pop(key, None)
            self._timers[key] = timer
        if previous is not None:
            previous.cancel()
        timer.start()

    # ---- one step ------------------------------------------------------------------------------------
    def _owned_runs(self, namespace: str, schedule: Body) -> list[Body]:
        meta = schedule["metadata"]
        runs = self.runs_of(namespace, meta["name"])
        if runs is None:
            runs = kube.list_runs(namespace, f"{SCHEDULE_LABEL}={meta['name']}")
        return [r for r in runs
                if not (r.get("metadata") or {}).get("deletionTimestamp") and owned_by(r, meta.get("uid"))]

    def _invalid(self, body: Body, err: SpecError) -> None:
        """A spec the API server accepted but the models reject (e.g. a cron expression croniter refuses)."""
        meta = body["metadata"]
        old = body.get("status") or {}
        message = clip("invalid spec: " + "; ".join(err.problems), 4096)
        before = {c.get("type"): c for c in old.get("conditions") or []}.get("Ready") or {}
        if before.get("reason") == INVALID_SPEC and before.get("message") == message \
                and old.get("observedGeneration") == meta.get("generation"):
            return
        status = {**old, "observedGeneration": meta.get("generation"), "conditions": invalid_spec_conditions(
            message, meta.get("generation"), old.get("conditions"), clock.now())}
        if self._write_status(body, status_patch(old, _normalise(status))):
            self.events.post(body, "Warning", INVALID_SPEC, message)

    def _write_status(self, body: Body, patch: Body) -> bool:
        """Write a status computed from `body`, guarded by its resourceVersion: a step that read an older
        schedule (a replica that has just lost the lease, Kopf's own annotation write in between) never
        overwrites a newer status. False on a conflict: the step runs again from a fresh read."""
        meta = body["metadata"]
        try:
            kube.patch_schedule_status(meta["namespace"], meta["name"], patch,
                                       resource_version=meta.get("resourceVersion"))
            return True
        except kube.KubeError as err:
            if not err.conflict:
                raise
        log.info("%s/%s: schedule status write conflicted; stepping again", meta["namespace"], meta["name"])
        self.trigger(meta["namespace"], meta["name"], "status write conflicted")
        return False

    def reconcile_now(self, namespace: str, name: str, why: str = "") -> ScheduleOutcome | None:
        body = kube.get_schedule(namespace, name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return None
        try:
            parse_resource({k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec")},
                           f"{namespace}/{name}")
        except SpecError as err:
            self._invalid(body, err)
            return None
        runs = self._owned_runs(namespace, body)
        phases = {r["metadata"]["name"]: (r.get("status") or {}).get("phase") for r in runs}
        finished = {n for n, p in phases.items() if p in ("Succeeded", "Failed")}
        created = 0
        # With caps, capacity is read and the new run recorded under one lock: two schedules due at the same
        # moment never both take the last slot (the run gate would hold the second back anyway).
        with self.capacity_lock:
            outcome = reconcile_schedule(body, runs, now=clock.now(), capacity_left=(
                self.capacity_left(namespace) if self.capacity_left is not None else None))
            # 1. Replace: the active runs go before the new one is created
            for run in [n for n in outcome.delete if n not in finished]:
                if kube.delete_run(namespace, run):
                    log.info("%s/%s: deleted active run %s (concurrencyPolicy Replace)", namespace, name, run)
            # 2. create (deterministic names: a 409 means an earlier step created it)
            for doc in outcome.create:
                made = kube.create_run(namespace, doc)
                if made is not None:
                    created += 1
                    self.observe_run(made)
                    log.info("%s/%s: created run %s", namespace, name, doc["metadata"]["name"])
        # 3. status (the promotion is recorded here, before the runs are marked as judged)
        old = body.get("status") or {}
        new = _normalise(outcome.status)
        if status_differs(old, new, normalise=_normalise) and not self._write_status(body, status_patch(old, new)):
            return None  # judged runs, pruning and Events wait for the step that writes its status
        # 4. mark each judged run, so it is judged once
        for run, verdict in outcome.annotate.items():
            kube.annotate_run(namespace, run, {PROMOTION_ANNOTATION: verdict})
        # 5. history limits
        for run in [n for n in outcome.delete if n in finished]:
            if kube.delete_run(namespace, run):
                log.info("%s/%s: deleted run %s (history limit)", namespace, name, run)
        for type_, reason, message in outcome.events:
            self.events.post(body, type_, reason, message)
        self.metrics.observe_schedule(namespace, name, outcome, created)
        with self._guard:
            self._blocked[(namespace, name)] = ready_reason(new) or ""
        self._requeue(namespace, name, outcome.requeue_seconds)
        return outcome
