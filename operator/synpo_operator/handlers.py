"""The operator process: kopf runs it (startup, probes, the SynPOSchedules); the SynPORuns go through a run
controller of our own. The only kopf import.

Runs (first half of this module): informers (`kube.WatchCache`) on the runs and on the Jobs and pods
labelled `synpo.dev/run` feed one de-duplicating `WorkQueue`; `SYNPO_OPERATOR_WORKERS` threads drain it,
calling `reconcile_now` for one run at a time. What queues a run:
- a change of the run, except the echo of our own status write (recognised by its resourceVersion);
- a change of the status of one of its Jobs, or a Job deleted;
- a resync pass over the cached runs every `SYNPO_OPERATOR_RESYNC_SECONDS` (default 30): runs past their
  deadline or TTL, and with the local executor every unsettled run (its processes send no events); every
  tenth pass every unsettled run (a safety net);
- a run slot freed up (concurrency caps); the TTL or deadline a reconcile computed (`requeue_after`); a
  failed reconcile (retried with back-off).
New runs go first, then event-driven reconciles, then resyncs and retries. Why not kopf handlers for runs: at a thousand runs kopf's per-object state
(a timer task per run, a worker per Job) and the finalizer it PATCHes onto every new run (plus the watch
round trip before the first handler) cost more memory, API writes and latency than the reconciles
themselves. Runs carry no finalizer: their Jobs are owned by them and go with them (garbage collection).

SynPOSchedules (second half): a timer per schedule plus create/update/resume handlers call
`schedule.reconcile_schedule` with the schedule's runs and carry out what it returns; a run of a schedule
that changes phase re-triggers its schedule at once.

Concurrent-run caps: every run event updates an in-memory `capacity.CapacityIndex`; a run that has not
started any stage asks it before starting (WaitingForCapacity otherwise), and schedules create no run
beyond the caps.

Configuration comes from the environment (set by `synpo operator`, read at import time):
  SYNPO_OPERATOR_EXECUTOR           jobs (default) | local
  SYNPO_OPERATOR_RESYNC_SECONDS     resync interval (default 30; tests use 1)
  SYNPO_OPERATOR_WORKERS            reconcile threads (default 16)
  SYNPO_OPERATOR_NAMESPACES         watched namespaces, comma-separated (empty: all)
  SYNPO_OPERATOR_CACHE              0: reconciles GET/LIST instead of reading the informers (benchmark baseline)
  SYNPO_MAX_ACTIVE_RUNS             cap on started, unfinished runs across watched namespaces (0/empty: none)
  SYNPO_MAX_ACTIVE_RUNS_PER_NAMESPACE   the same per namespace
  SYNPO_CLOCK_FILE                  tests only: the operator's clock (see clock.py)
"""

from __future__ import annotations

import contextlib
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
from .events import EVENTS
from .executors.jobs import JobExecutor, jobs_spec_problems
from .executors.manifests import LABEL_RUN, RUN_KIND
from .metrics import METRICS
from .reconcile import (
    Event,
    Outcome,
    ProtocolAdapter,
    merge_events,
    parse_time,
    reconcile,
    run_from_body,
    status_differs,
    status_patch,
)
from .schedule import PROMOTION_ANNOTATION, SCHEDULE_LABEL, ScheduleOutcome, reconcile_schedule
from .workqueue import EVENT, LATER, NEW, WorkQueue

PLURAL = "synporuns"
FINALIZER = "synpo.dev/finalizer"
EXECUTOR = os.environ.get("SYNPO_OPERATOR_EXECUTOR", "jobs")
RESYNC_SECONDS = float(os.environ.get("SYNPO_OPERATOR_RESYNC_SECONDS", "30"))
MAX_WORKERS = int(os.environ.get("SYNPO_OPERATOR_WORKERS", "16"))
NAMESPACES = [n for n in os.environ.get("SYNPO_OPERATOR_NAMESPACES", "").split(",") if n]
CAPS = Caps.parse(os.environ.get("SYNPO_MAX_ACTIVE_RUNS"), os.environ.get("SYNPO_MAX_ACTIVE_RUNS_PER_NAMESPACE"))
CAPACITY = CapacityIndex(CAPS)
"""Slot state of every watched run (concurrent-run caps; also tells schedules when their runs change)."""

log = logging.getLogger("synpo.operator")


# ---- the run controller: work queue, workers, informers, resync ------------------------------------------

LANES = {NEW: "new", EVENT: "event", LATER: "later"}
QUEUE = WorkQueue(observe_wait=lambda lane, seconds: METRICS.queue_wait.labels(lane=LANES[lane]).observe(seconds))
METRICS.queue_depth.set_function(lambda: len(QUEUE))
FULL_RESYNC_EVERY = 10
"""Every this many resync passes, every unsettled run is reconciled (not only those with a deadline due)."""


def trigger(namespace: str, name: str, why: str = "", lane: int = EVENT) -> None:
    """Queue a reconcile of the run (once, however often it is asked for before a worker takes it)."""
    log.debug("queue %s/%s: %s", namespace, name, why)
    QUEUE.add((namespace, name), lane)


def _nudge(fn: Any, *args: Any) -> None:
    """Call fn(*args) on a short-lived thread (a schedule step must not hold up the caller)."""
    threading.Thread(target=fn, args=args, daemon=True, name="synpo-nudge").start()


_own_writes: dict[tuple[str, str], str] = {}
"""run -> resourceVersion of our last status write: its watch echo needs no reconcile."""
_local_executors: dict[tuple[str, str], Any] = {}
"""run -> its LocalExecutor (it owns the run's child processes); --executor local only."""
_informers: dict[str, list[kube.WatchCache]] = {}
_stopping = threading.Event()


def _work() -> None:
    while (key := QUEUE.get()) is not None:
        namespace, name = key  # type: ignore[misc]
        try:
            with METRICS.reconcile_duration.time():
                outcome = reconcile_now(namespace, name)
            QUEUE.forget(key)
            if outcome is not None and outcome.requeue_after is not None:
                QUEUE.add_after(key, outcome.requeue_after)  # TTL or deadline due then
        except Exception as err:  # noqa: BLE001 - counted, logged, retried with back-off
            METRICS.error("reconcile")
            delay = QUEUE.add_rate_limited(key)  # back-off in the queue: 0.5 s doubling to 30 s
            log.warning("reconcile of %s/%s failed (retry in %.1f s): %s", namespace, name, delay, err)
        finally:
            QUEUE.done(key)


def _resync_loop() -> None:
    """Every RESYNC_SECONDS, queue the runs with time-driven work; every FULL_RESYNC_EVERY-th pass, every
    unsettled run (a safety net: events already queue a run whenever it or its Jobs change)."""
    passes = 0
    while not _stopping.wait(RESYNC_SECONDS):
        passes += 1
        full = passes % FULL_RESYNC_EVERY == 0
        for cache in _informers.get("runs", ()):
            for body in cache.items():
                meta = body.get("metadata") or {}
                if _watched(meta.get("namespace", "")) and _resync_wanted(body, full):
                    trigger(meta["namespace"], meta["name"], "resync", LATER)


def _resync_wanted(body: dict[str, Any], full: bool) -> bool:
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return False
    if _settled(body):
        return _ttl_expired(body)
    if full or EXECUTOR == "local":  # local processes send no events: they are polled
        return True
    deadline = (body.get("spec") or {}).get("activeDeadlineSeconds")
    started = parse_time((body.get("status") or {}).get("startTime"))
    return deadline is not None and started is not None and (clock.now() - started).total_seconds() >= deadline


def _watched(namespace: str) -> bool:
    return not NAMESPACES or any(fnmatch.fnmatch(namespace, pattern) for pattern in NAMESPACES)


def _on_run(type_: str, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    meta = new.get("metadata") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    if not _watched(namespace):
        return
    key = (namespace, name)
    if type_ == "DELETED":
        _run_gone(namespace, name)
        return
    _observe_run(new)
    if meta.get("deletionTimestamp"):
        if FINALIZER in (meta.get("finalizers") or []):
            _release_finalizer(namespace, name, meta["finalizers"])
        return
    if type_ == "MODIFIED" and _own_writes.get(key) == meta.get("resourceVersion"):
        return  # the echo of our own status write
    trigger(namespace, name, f"run {type_.lower()}", EVENT if (new.get("status") or {}).get("phase") else NEW)


def _run_gone(namespace: str, name: str) -> None:
    """The run is deleted: its Jobs go by garbage collection (they are owned by it); local processes are
    stopped here."""
    key = (namespace, name)
    local = _local_executors.pop(key, None)
    if local is not None:
        local.stop()
    _own_writes.pop(key, None)
    QUEUE.forget(key)
    _deferred.pop(key, None)
    METRICS.forget(namespace, name)
    _slot_changed(CAPACITY.forget(namespace, name), None)


def _release_finalizer(namespace: str, name: str, finalizers: list[str]) -> None:
    """Runs made by earlier versions of the operator (kopf handled runs then) carry our finalizer; nothing
    needs it any more."""
    try:
        kube.request("PATCH", kube.run_path(namespace, name), [
            {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
            {"op": "replace", "path": "/metadata/finalizers", "value": [f for f in finalizers if f != FINALIZER]},
        ], content_type="application/json-patch+json")
    except kube.KubeError as err:
        if not err.not_found:
            log.warning("%s/%s: could not release the finalizer: %s", namespace, name, err)


def _on_job(type_: str, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    meta = new.get("metadata") or {}
    if not _watched(meta.get("namespace", "")):
        return
    if (type_ == "MODIFIED" and old is not None and old.get("status") == new.get("status")
            and (old.get("metadata") or {}).get("deletionTimestamp") == meta.get("deletionTimestamp")):
        return  # nothing a reconcile reads changed
    owner = next((r["name"] for r in meta.get("ownerReferences") or []
                  if r.get("kind") == RUN_KIND and r.get("controller")), None)
    if owner:
        trigger(meta.get("namespace", ""), owner, f"job {type_.lower()}")


def start_controller() -> None:
    """Start the informers (they queue every existing run once) and the workers and resync thread."""
    _stopping.clear()
    EVENTS.hold = lambda: not _stopping.is_set() and _burst()
    scopes: list[str | None] = list(NAMESPACES) if NAMESPACES and not any(
        ch in n for n in NAMESPACES for ch in "*?[") else [None]
    _informers.update(kube.start_informers(scopes, {
        "runs": (None, kube.slim, _on_run),
        "jobs": (LABEL_RUN, kube.slim_job, _on_job),
        "pods": (LABEL_RUN, kube.slim_pod, None),
    }))
    for i in range(MAX_WORKERS):
        threading.Thread(target=_work, daemon=True, name=f"synpo-reconcile-{i}").start()
    threading.Thread(target=_resync_loop, daemon=True, name="synpo-resync").start()


# ---- executors ---------------------------------------------------------------------------------------------

def _executor_for(body: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(executor, executor_check, max_attempts) for the run."""
    meta = body.get("metadata") or {}
    namespace, name, uid = meta.get("namespace", "default"), meta["name"], meta.get("uid")
    try:
        run = run_from_body(body)
    except SpecError:
        run = None
    if EXECUTOR == "local":
        # local processes are not retried by anyone else: the planner retries up to backoffLimit times
        return (_local_executor(run, namespace, name), _local_spec_problems,
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


def _local_executor(run: Any, namespace: str, name: str) -> Any:
    current = _local_executors.get((namespace, name))
    if run is None or _local_spec_problems(run):
        return current or _NoExecutor()
    if current is None:
        from .executors.local import LocalExecutor

        def fresh() -> Any:
            return LocalExecutor(run.spec, name=name, namespace=namespace)

        current = _local_executors[(namespace, name)] = ProtocolAdapter(fresh(), factory=fresh)
    else:
        current.executor.spec = run.spec
    return current


# ---- the reconcile -------------------------------------------------------------------------------------

def _burst() -> bool:
    """New runs wait for a worker: their first Jobs go before writes that can wait."""
    return QUEUE.waiting(NEW) > 0


@dataclass
class _Deferred:
    """A new run's first reconcile during a burst: what its first status write must still carry."""

    start_time: str | None
    events: list[Event]


_deferred: dict[tuple[str, str], _Deferred] = {}


def reconcile_now(namespace: str, name: str) -> Outcome | None:
    key = (namespace, name)
    body = kube.get_run(namespace, name)
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return None
    old = body.get("status") or {}
    held = None if old else _deferred.get(key)
    # A burst of new runs (a thousand applied at once) is bound by the API server: while new runs wait, a run
    # never reconciled gets one Job and nothing else; its other ready stages, its first status write (with
    # the startTime of this reconcile) and its Events (merged) come with its next reconcile, queued behind
    # every new run and event.
    burst = not old and held is None and _burst()
    executor, check, attempts = _executor_for(body)
    admit = (lambda: CAPACITY.admit(body)) if CAPS.limited else None
    outcome = reconcile({**body, "status": {"startTime": held.start_time}} if held else body, executor,
                        clock.now(), executor_check=check, max_attempts=attempts, admit=admit,
                        max_starts=1 if burst else None)
    events = outcome.events
    if burst and outcome.started:
        METRICS.burst_deferrals.inc()
        _deferred[key] = _Deferred(outcome.status.get("startTime"), outcome.events)
        _observe_run({**body, "status": outcome.status})
        QUEUE.add(key, LATER)
        events = []
    elif status_differs(old, outcome.status):
        patched = kube.patch_run_status(namespace, name, status_patch(old, outcome.status))
        if patched:
            _own_writes[(namespace, name)] = (patched.get("metadata") or {}).get("resourceVersion", "")
        _observe_run(patched or {**body, "status": outcome.status})
        if held is not None:
            events = merge_events([*held.events, *events])
            _deferred.pop(key, None)
    for started in outcome.started:
        log.info("%s/%s: created Job for stage %s", namespace, name, started)
    for event in events:
        _post(body, event.type, event.reason, event.message)
    METRICS.observe(namespace, name, outcome)
    if outcome.delete_run:
        log.info("%s/%s: ttlSecondsAfterFinished passed; deleting the run", namespace, name)
        _post(body, "Normal", "TTLExpired", "ttlSecondsAfterFinished passed: deleting the run")
        kube.delete_run(namespace, name)
    return outcome


def _post(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    EVENTS.post(body, type_, reason, message)


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
    settings.persistence.finalizer = FINALIZER  # SynPOSchedules only: runs have no kopf handlers
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="synpo.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="synpo.dev")
    settings.posting.level = logging.WARNING  # kopf's own log lines become Events only when they matter
    settings.execution.max_workers = 4
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    kube.api_client()
    start_controller()
    log.info("synpo operator started (executor=%s, workers=%s, resync=%ss, max active runs=%s, per namespace=%s)",
             EXECUTOR, MAX_WORKERS, RESYNC_SECONDS, CAPS.max_active or "unlimited",
             CAPS.max_per_namespace or "unlimited")


@kopf.on.cleanup()
def shutdown(**_: Any) -> None:
    _stopping.set()
    QUEUE.close()
    kube.stop_informers()
    EVENTS.flush()


@kopf.on.probe(id="runQueue")
def queued_runs(**_: Any) -> int:
    """The liveness endpoint reports how many runs wait for a reconcile."""
    return len(QUEUE)


# ==== concurrent-run caps ===================================================================================

def _observe_run(body: Any) -> None:
    """Record a run's latest known state in the capacity index and react to what changed."""
    if not body or not (body.get("metadata") or {}).get("name"):
        return
    old, new = CAPACITY.update(body)
    _slot_changed(old, new)


def _slot_changed(old: RunSlot | None, new: RunSlot | None) -> None:
    """A run appeared, changed phase or slot state, or went away: nudge its schedule, and when a slot freed
    up, the waiting runs that may start now (the resync would, later)."""
    if old is not None and new is not None and (old.phase, old.state) == (new.phase, new.state):
        return
    slot = new or old
    assert slot is not None
    if slot.schedule:
        _nudge(trigger_schedule, slot.namespace, slot.schedule, f"run {slot.name} is {new.phase if new else 'gone'}")
    freed = old is not None and old.state == "active" and (new is None or new.state != "active")
    if freed and CAPS.limited:
        for namespace, name in CAPACITY.admissible():
            trigger(namespace, name, "a run slot freed up")
        with _schedules_guard:
            blocked = [k for k, reason in _schedule_blocked.items() if reason == "ConcurrencyCap"]
        for namespace, name in blocked:
            _nudge(trigger_schedule, namespace, name, "a run slot freed up")


# ==== SynPOSchedule ==========================================================================================
#
# One pure step, `schedule.reconcile_schedule(body, runs, now=, capacity_left=)`; the handlers decide when it
# runs (timer, create/update/resume, a run of the schedule changing phase) and carry out its outcome:
# Replace-deletes, creates (409 is fine: names are deterministic), the status (only when changed), the
# promotion verdict annotations, history pruning, Events and metrics.

SCHEDULE_PLURAL = kube.SCHEDULE_PLURAL


@dataclass
class _Slot:
    """Coalescing state of one schedule: its steps run on kopf's and our threads, never two at once."""

    guard: threading.Lock = field(default_factory=threading.Lock)
    running: bool = False
    again: bool = False


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
            except Exception as err:  # noqa: BLE001 - counted, logged, retried by the next trigger or timer
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
    timer = threading.Timer(seconds, trigger_schedule, args=(namespace, name, "scheduled time"))
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
