"""Kopf handlers: translate watch events and timers into calls of `reconcile.reconcile`. The only kopf import.

Triggers of a run's reconcile:
- any event of the SynPORun (create, spec change, our own status write: a no-op then);
- any event of a Job labelled `synpo.dev/run` (stage progress, completion, failure, deletion);
- a periodic timer (every `SYNPO_OPERATOR_RESYNC_SECONDS`, default 30): deadlines, TTL, missed events.

Triggers are coalesced per run: while one reconcile of a run is in progress, further triggers only mark it
to run once more afterwards, so bursts of Job events cost one or two reconciles and two reconciles of one
run never overlap. Each reconcile re-reads the run from the API server, lists its Jobs and pods, and writes
status only when it changed.

SynPOSchedules (second half of this module): a timer per schedule plus create/update/resume handlers call
`schedule.reconcile_schedule` with the schedule's runs and carry out what it returns; a run of a schedule
that changes phase re-triggers its schedule at once.

Concurrent-run caps: every run event updates an in-memory `capacity.CapacityIndex`; a run that has not
started any stage asks it before starting (WaitingForCapacity otherwise), and schedules create no run
beyond the caps.

Configuration comes from the environment (set by `synpo operator`, read at import time):
  SYNPO_OPERATOR_EXECUTOR           jobs (default) | local
  SYNPO_OPERATOR_RESYNC_SECONDS     timer interval (default 30; tests use 1)
  SYNPO_OPERATOR_NAMESPACES         watched namespaces, comma-separated (empty: all)
  SYNPO_MAX_ACTIVE_RUNS             cap on started, unfinished runs across watched namespaces (0/empty: none)
  SYNPO_MAX_ACTIVE_RUNS_PER_NAMESPACE   the same per namespace
  SYNPO_CLOCK_FILE                  tests only: the operator's clock (see clock.py)
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import kopf

from . import clock, kube
from .api.common import GROUP, VERSION
from .api.loader import SpecError, parse_resource
from .capacity import CapacityIndex, Caps, RunSlot
from .executors.jobs import JobExecutor, jobs_spec_problems
from .executors.manifests import LABEL_MANAGED_BY, LABEL_RUN, MANAGED_BY, RUN_KIND
from .metrics import METRICS
from .reconcile import (
    Outcome,
    ProtocolAdapter,
    parse_time,
    reconcile,
    run_from_body,
    status_differs,
    status_patch,
)
from .schedule import PROMOTION_ANNOTATION, SCHEDULE_LABEL, ScheduleOutcome, reconcile_schedule

PLURAL = "synporuns"
FINALIZER = "synpo.dev/finalizer"
EXECUTOR = os.environ.get("SYNPO_OPERATOR_EXECUTOR", "jobs")
RESYNC_SECONDS = float(os.environ.get("SYNPO_OPERATOR_RESYNC_SECONDS", "30"))
MAX_WORKERS = int(os.environ.get("SYNPO_OPERATOR_WORKERS", "8"))
NAMESPACES = [n for n in os.environ.get("SYNPO_OPERATOR_NAMESPACES", "").split(",") if n]
CAPS = Caps.parse(os.environ.get("SYNPO_MAX_ACTIVE_RUNS"), os.environ.get("SYNPO_MAX_ACTIVE_RUNS_PER_NAMESPACE"))
CAPACITY = CapacityIndex(CAPS)
"""Slot state of every watched run (concurrent-run caps; also tells schedules when their runs change)."""

log = logging.getLogger("synpo.operator")


# ---- per-run coalescing ----------------------------------------------------------------------------------

@dataclass
class _Slot:
    guard: threading.Lock = field(default_factory=threading.Lock)
    running: bool = False
    again: bool = False
    executor: Any = None
    """The local executor of the run (it owns child processes); unused for Jobs."""


_slots: dict[tuple[str, str], _Slot] = {}
_slots_guard = threading.Lock()


def _slot(namespace: str, name: str) -> _Slot:
    with _slots_guard:
        return _slots.setdefault((namespace, name), _Slot())


def _coalesce(slot: _Slot, work: Any, what: str, why: str, error_kind: str) -> None:
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
            except Exception as err:  # noqa: BLE001 - counted, logged, retried by the next trigger/timer
                METRICS.error(error_kind)
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


def trigger(namespace: str, name: str, why: str) -> None:
    """Reconcile the run now, or once more after the reconcile in progress."""
    slot = _slot(namespace, name)
    _coalesce(slot, lambda w: reconcile_now(namespace, name, slot, w), f"reconcile of {namespace}/{name}", why,
              "reconcile")


def _nudge(fn: Any, *args: Any) -> None:
    """Call fn(*args) on a short-lived thread (kopf's context kept, so Events can be posted)."""
    ctx = contextvars.copy_context()
    threading.Thread(target=ctx.run, args=(fn, *args), daemon=True, name="synpo-nudge").start()


# ---- executors ---------------------------------------------------------------------------------------------

def _executor_for(body: dict[str, Any], slot: _Slot) -> tuple[Any, Any, Any]:
    """(executor, executor_check, max_attempts) for the run."""
    meta = body.get("metadata") or {}
    namespace, name, uid = meta.get("namespace", "default"), meta["name"], meta.get("uid")
    try:
        run = run_from_body(body)
    except SpecError:
        run = None
    if EXECUTOR == "local":
        # local processes are not retried by anyone else: the planner retries up to backoffLimit times
        return (_local_executor(run, namespace, name, slot), _local_spec_problems,
                lambda r: r.spec.backoff_limit + 1)
    return JobExecutor(namespace, name, run=run, uid=uid), jobs_spec_problems, 1


def _local_spec_problems(run: Any) -> list[str]:
    uri = run.spec.storage.uri
    if uri is None or ("://" in uri and not uri.startswith("file://")):
        return ["spec.storage: the local executor needs storage.uri set to a local directory "
                f"(got {'a volume' if uri is None else repr(uri)})"]
    return []


class _NoExecutor:
    def records(self) -> dict:
        return {}

    def start(self, start: Any) -> bool:
        return False

    def stop(self) -> list[str]:
        return []


def _local_executor(run: Any, namespace: str, name: str, slot: _Slot) -> Any:
    if run is None or _local_spec_problems(run):
        return slot.executor or _NoExecutor()
    if slot.executor is None:
        from .executors.local import LocalExecutor

        def fresh() -> Any:
            return LocalExecutor(run.spec, name=name, namespace=namespace)

        slot.executor = ProtocolAdapter(fresh(), factory=fresh)
    else:
        slot.executor.executor.spec = run.spec
    return slot.executor


# ---- the reconcile -------------------------------------------------------------------------------------

def reconcile_now(namespace: str, name: str, slot: _Slot | None = None, why: str = "") -> Outcome | None:
    slot = slot or _slot(namespace, name)
    body = kube.get_run(namespace, name)
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return None
    executor, check, attempts = _executor_for(body, slot)
    admit = (lambda: CAPACITY.admit(body)) if CAPS.limited else None
    outcome = reconcile(body, executor, clock.now(), executor_check=check, max_attempts=attempts, admit=admit)
    old = body.get("status") or {}
    if status_differs(old, outcome.status):
        patched = kube.patch_run_status(namespace, name, status_patch(old, outcome.status))
        _observe_run(patched or {**body, "status": outcome.status})
    for started in outcome.started:
        log.info("%s/%s: created Job for stage %s", namespace, name, started)
    for event in outcome.events:
        _post(body, event.type, event.reason, event.message)
    METRICS.observe(namespace, name, outcome)
    if outcome.delete_run:
        log.info("%s/%s: ttlSecondsAfterFinished passed; deleting the run", namespace, name)
        _post(body, "Normal", "TTLExpired", "ttlSecondsAfterFinished passed: deleting the run")
        kube.delete_run(namespace, name)
    return outcome


def _post(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    try:
        kopf.event(body, type=type_, reason=reason, message=message[:1024])
    except LookupError:  # outside the operator (direct calls in tests): no event queue
        log.info("event %s %s: %s", type_, reason, message)


def _ttl_expired(body: Any) -> bool:
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    ttl = spec.get("ttlSecondsAfterFinished")
    done = parse_time(status.get("completionTime"))
    return ttl is not None and done is not None and (clock.now() - done).total_seconds() >= ttl


def _settled(body: Any) -> bool:
    """Finished and up to date: nothing for the timer to do but the TTL."""
    status = body.get("status") or {}
    return (status.get("phase") in ("Succeeded", "Failed")
            and status.get("observedGeneration") == (body.get("metadata") or {}).get("generation"))


# ---- kopf wiring ---------------------------------------------------------------------------------------

@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="synpo.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="synpo.dev")
    settings.posting.level = logging.WARNING  # kopf's own log lines become Events only when they matter
    settings.execution.max_workers = MAX_WORKERS
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    kube.api_client()
    if CAPS.limited:
        _prime_capacity()
    log.info("synpo operator started (executor=%s, resync=%ss, max active runs=%s, per namespace=%s)",
             EXECUTOR, RESYNC_SECONDS, CAPS.max_active or "unlimited", CAPS.max_per_namespace or "unlimited")


@kopf.on.event(GROUP, VERSION, PLURAL)
def run_event(type: str | None, body: Any, namespace: str, name: str, **_: Any) -> None:
    if type == "DELETED":
        METRICS.forget(namespace, name)
        with _slots_guard:
            _slots.pop((namespace, name), None)
        _slot_changed(CAPACITY.forget(namespace, name), None)
        return
    _observe_run(body)
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return
    trigger(namespace, name, f"run {type or 'listed'}")


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, sharp=False)
def resync(body: Any, namespace: str, name: str, **_: Any) -> None:
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return
    if _settled(body) and EXECUTOR == "jobs":
        if _ttl_expired(body):
            trigger(namespace, name, "ttl")
        return
    trigger(namespace, name, "resync")


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_RUN: kopf.PRESENT, LABEL_MANAGED_BY: MANAGED_BY})
def job_event(body: Any, namespace: str, **_: Any) -> None:
    owners = [r for r in (body.get("metadata") or {}).get("ownerReferences") or []
              if r.get("kind") == RUN_KIND and r.get("controller")]
    if owners:
        trigger(namespace, owners[0]["name"], "job event")


@kopf.on.delete(GROUP, VERSION, PLURAL)
def run_deleted(body: Any, namespace: str, name: str, **_: Any) -> None:
    """Delete the run's Jobs (background propagation), then kopf releases the finalizer."""
    slot = _slot(namespace, name)
    if EXECUTOR == "local":
        if slot.executor is not None:
            slot.executor.stop()
    else:
        uid = (body.get("metadata") or {}).get("uid")
        deleted = JobExecutor(namespace, name, uid=uid).delete_all()
        if deleted:
            log.info("%s/%s deleted: removed Jobs %s", namespace, name, ", ".join(sorted(deleted)))
    METRICS.forget(namespace, name)


# ==== concurrent-run caps ===================================================================================

def _observe_run(body: Any) -> None:
    """Record a run's latest known state in the capacity index and react to what changed."""
    if not body or not (body.get("metadata") or {}).get("name"):
        return
    old, new = CAPACITY.update(body)
    _slot_changed(old, new)


def _slot_changed(old: RunSlot | None, new: RunSlot | None) -> None:
    """A run appeared, changed phase or slot state, or went away: nudge its schedule, and when a slot freed
    up, the waiting runs that may start now (the per-run timer would, later)."""
    if old is not None and new is not None and (old.phase, old.state) == (new.phase, new.state):
        return
    slot = new or old
    assert slot is not None
    if slot.schedule:
        _nudge(trigger_schedule, slot.namespace, slot.schedule, f"run {slot.name} is {new.phase if new else 'gone'}")
    freed = old is not None and old.state == "active" and (new is None or new.state != "active")
    if freed and CAPS.limited:
        for namespace, name in CAPACITY.admissible():
            _nudge(trigger, namespace, name, "a run slot freed up")
        with _schedules_guard:
            blocked = [k for k, reason in _schedule_blocked.items() if reason == "ConcurrencyCap"]
        for namespace, name in blocked:
            _nudge(trigger_schedule, namespace, name, "a run slot freed up")


def _prime_capacity() -> None:
    """Fill the capacity index from a listing before any event is handled, so that a waiting run is never
    admitted before the runs that already hold slots are known (operator restart)."""
    try:
        if not NAMESPACES:
            bodies = kube.list_runs()
        else:
            bodies = []
            globs = [n for n in NAMESPACES if any(ch in n for ch in "*?[!")]
            for namespace in NAMESPACES:
                if namespace not in globs:
                    bodies += kube.list_runs(namespace)
            if globs:
                bodies += [b for b in kube.list_runs()
                           if any(fnmatch.fnmatch((b.get("metadata") or {}).get("namespace", ""), g) for g in globs)
                           and (b.get("metadata") or {}).get("namespace") not in NAMESPACES]
        CAPACITY.replace_all(bodies)
        log.info("capacity index primed with %d run(s)", len(bodies))
    except Exception as err:  # noqa: BLE001 - the watch fills the index too; admissions may lag until then
        log.warning("could not list runs for the concurrency caps: %s", err)


# ==== SynPOSchedule ==========================================================================================
#
# One pure step, `schedule.reconcile_schedule(body, runs, now=, capacity_left=)`; the handlers decide when it
# runs (timer, create/update/resume, a run of the schedule changing phase) and carry out its outcome:
# Replace-deletes, creates (409 is fine: names are deterministic), the status (only when changed), the
# promotion verdict annotations, history pruning, Events and metrics.

SCHEDULE_PLURAL = kube.SCHEDULE_PLURAL

_schedule_slots: dict[tuple[str, str], _Slot] = {}
_schedule_timers: dict[tuple[str, str], threading.Timer] = {}
_schedule_blocked: dict[tuple[str, str], str] = {}
"""Schedules and the reason of their last Ready condition (to nudge those waiting for a slot)."""
_schedules_guard = threading.Lock()
_capacity_guard = threading.Lock()


def trigger_schedule(namespace: str, name: str, why: str) -> None:
    """Reconcile the schedule now, or once more after the step in progress."""
    with _schedules_guard:
        slot = _schedule_slots.setdefault((namespace, name), _Slot())
    _coalesce(slot, lambda w: reconcile_schedule_now(namespace, name, w),
              f"schedule step of {namespace}/{name}", why, "schedule")


def _owned_runs(namespace: str, schedule: dict[str, Any]) -> list[dict[str, Any]]:
    meta = schedule["metadata"]
    runs = kube.list_runs(namespace, f"{SCHEDULE_LABEL}={meta['name']}")
    return [r for r in runs
            if not (r.get("metadata") or {}).get("deletionTimestamp")
            and any(ref.get("uid") == meta.get("uid") and ref.get("controller")
                    for ref in (r.get("metadata") or {}).get("ownerReferences") or [])]


def _schedule_status(status: dict[str, Any]) -> dict[str, Any]:
    from .api.schedule import SynPOScheduleStatus

    return SynPOScheduleStatus.model_validate({k: v for k, v in status.items() if v is not None}).to_api()


def _invalid_schedule(body: dict[str, Any], err: SpecError) -> None:
    """A spec the API server accepted but the models reject (e.g. a cron expression croniter refuses)."""
    meta = body["metadata"]
    old = body.get("status") or {}
    message = ("invalid spec: " + "; ".join(err.problems))[:4096]
    before = {c.get("type"): c for c in old.get("conditions") or []}.get("Ready") or {}
    if before.get("reason") == "InvalidSpec" and before.get("message") == message \
            and old.get("observedGeneration") == meta.get("generation"):
        return
    now = clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {**old, "observedGeneration": meta.get("generation"), "conditions": [
        {"type": "Ready", "status": "False", "reason": "InvalidSpec", "message": message,
         "observedGeneration": meta.get("generation"), "lastTransitionTime": now}]}
    kube.patch_schedule_status(meta["namespace"], meta["name"], status_patch(old, _schedule_status(status)))
    _post(body, "Warning", "InvalidSpec", message)


def reconcile_schedule_now(namespace: str, name: str, why: str = "") -> ScheduleOutcome | None:
    body = kube.get_schedule(namespace, name)
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return None
    try:
        parse_resource({k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec")},
                       f"{namespace}/{name}")
    except SpecError as err:
        _invalid_schedule(body, err)
        return None
    runs = _owned_runs(namespace, body)
    phases = {r["metadata"]["name"]: (r.get("status") or {}).get("phase") for r in runs}
    finished = {n for n, p in phases.items() if p in ("Succeeded", "Failed")}
    created = 0
    # With caps, capacity is read and the new run recorded under one lock: two schedules due at the same
    # moment never both take the last slot (the run gate would hold the second back anyway).
    with _capacity_guard if CAPS.limited else contextlib.nullcontext():
        outcome = reconcile_schedule(body, runs, now=clock.now(),
                                     capacity_left=CAPACITY.capacity_left(namespace) if CAPS.limited else None)
        # 1. Replace: the active runs go before the new one is created
        for run in [n for n in outcome.delete if n not in finished]:
            if kube.delete_run(namespace, run):
                log.info("%s/%s: deleted active run %s (concurrencyPolicy Replace)", namespace, name, run)
        # 2. create (deterministic names: a 409 means an earlier step created it)
        for doc in outcome.create:
            made = kube.create_run(namespace, doc)
            if made is not None:
                created += 1
                _observe_run(made)
                log.info("%s/%s: created run %s", namespace, name, doc["metadata"]["name"])
    # 3. status (the promotion is recorded here, before the runs are marked as judged)
    old = body.get("status") or {}
    new = _schedule_status(outcome.status)
    if status_differs(old, new, normalise=_schedule_status):
        kube.patch_schedule_status(namespace, name, status_patch(old, new))
    # 4. mark each judged run, so it is judged once
    for run, verdict in outcome.annotate.items():
        kube.annotate_run(namespace, run, {PROMOTION_ANNOTATION: verdict})
    # 5. history limits
    for run in [n for n in outcome.delete if n in finished]:
        if kube.delete_run(namespace, run):
            log.info("%s/%s: deleted run %s (history limit)", namespace, name, run)
    for type_, reason, message in outcome.events:
        _post(body, type_, reason, message)
    METRICS.observe_schedule(namespace, name, outcome, created)
    ready: dict[str, Any] = next((c for c in new.get("conditions") or [] if c.get("type") == "Ready"), {})
    with _schedules_guard:
        _schedule_blocked[(namespace, name)] = ready.get("reason", "")
    _requeue_schedule(namespace, name, outcome.requeue_seconds)
    return outcome


def _requeue_schedule(namespace: str, name: str, seconds: float) -> None:
    """Look again at the next scheduled time when that comes before the next timer tick."""
    if seconds >= RESYNC_SECONDS:
        return
    key = (namespace, name)
    ctx = contextvars.copy_context()
    timer = threading.Timer(seconds, ctx.run, args=(trigger_schedule, namespace, name, "scheduled time"))
    timer.daemon = True
    with _schedules_guard:
        previous = _schedule_timers.pop(key, None)
        _schedule_timers[key] = timer
    if previous is not None:
        previous.cancel()
    timer.start()


def _forget_schedule(namespace: str, name: str) -> None:
    with _schedules_guard:
        _schedule_slots.pop((namespace, name), None)
        _schedule_blocked.pop((namespace, name), None)
        timer = _schedule_timers.pop((namespace, name), None)
    if timer is not None:
        timer.cancel()
    METRICS.forget_schedule(namespace, name)


@kopf.on.resume(GROUP, VERSION, SCHEDULE_PLURAL)
def schedule_resumed(namespace: str, name: str, **_: Any) -> None:
    trigger_schedule(namespace, name, "operator start")


@kopf.on.create(GROUP, VERSION, SCHEDULE_PLURAL)
def schedule_created(namespace: str, name: str, **_: Any) -> None:
    trigger_schedule(namespace, name, "schedule created")


@kopf.on.update(GROUP, VERSION, SCHEDULE_PLURAL)
def schedule_updated(namespace: str, name: str, **_: Any) -> None:
    trigger_schedule(namespace, name, "schedule changed")


@kopf.timer(GROUP, VERSION, SCHEDULE_PLURAL, interval=RESYNC_SECONDS, sharp=False)
def schedule_resync(body: Any, namespace: str, name: str, **_: Any) -> None:
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return
    trigger_schedule(namespace, name, "resync")


@kopf.on.event(GROUP, VERSION, SCHEDULE_PLURAL)
def schedule_event(type: str | None, namespace: str, name: str, **_: Any) -> None:
    if type == "DELETED":
        _forget_schedule(namespace, name)
