"""Kopf handlers: translate watch events and timers into calls of `reconcile.reconcile`. The only kopf import.

Triggers of a run's reconcile:
- any event of the SynPORun (create, spec change, our own status write: a no-op then);
- any event of a Job labelled `synpo.dev/run` (stage progress, completion, failure, deletion);
- a periodic timer (every `SYNPO_OPERATOR_RESYNC_SECONDS`, default 30): deadlines, TTL, missed events.

Triggers are coalesced per run: while one reconcile of a run is in progress, further triggers only mark it
to run once more afterwards, so bursts of Job events cost one or two reconciles and two reconciles of one
run never overlap. Each reconcile re-reads the run from the API server, lists its Jobs and pods, and writes
status only when it changed.

Configuration comes from the environment (set by `synpo operator`, read at import time):
  SYNPO_OPERATOR_EXECUTOR           jobs (default) | local
  SYNPO_OPERATOR_RESYNC_SECONDS     timer interval (default 30; tests use 1)
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import kopf

from . import kube
from .api.common import GROUP, VERSION
from .api.loader import SpecError
from .executors.jobs import JobExecutor, jobs_spec_problems
from .executors.manifests import LABEL_MANAGED_BY, LABEL_RUN, MANAGED_BY, RUN_KIND
from .metrics import METRICS
from .reconcile import (
    Outcome,
    ProtocolAdapter,
    now_utc,
    parse_time,
    reconcile,
    run_from_body,
    status_differs,
    status_patch,
)

PLURAL = "synporuns"
FINALIZER = "synpo.dev/finalizer"
EXECUTOR = os.environ.get("SYNPO_OPERATOR_EXECUTOR", "jobs")
RESYNC_SECONDS = float(os.environ.get("SYNPO_OPERATOR_RESYNC_SECONDS", "30"))
MAX_WORKERS = int(os.environ.get("SYNPO_OPERATOR_WORKERS", "8"))

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


def trigger(namespace: str, name: str, why: str) -> None:
    """Reconcile the run now, or once more after the reconcile in progress."""
    slot = _slot(namespace, name)
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
                reconcile_now(namespace, name, slot, why)
            except Exception as err:  # noqa: BLE001 - counted, logged, retried by the next trigger/timer
                METRICS.error("reconcile")
                log.warning("reconcile of %s/%s failed (%s): %s", namespace, name, why, err)
            with slot.guard:
                if not slot.again:
                    slot.running = False
                    return
            why = "coalesced trigger"
    except BaseException:
        with slot.guard:
            slot.running = False
        raise


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
    outcome = reconcile(body, executor, now_utc(), executor_check=check, max_attempts=attempts)
    old = body.get("status") or {}
    if status_differs(old, outcome.status):
        kube.patch_run_status(namespace, name, status_patch(old, outcome.status))
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
    return ttl is not None and done is not None and (now_utc() - done).total_seconds() >= ttl


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
    log.info("synpo operator started (executor=%s, resync=%ss)", EXECUTOR, RESYNC_SECONDS)


@kopf.on.event(GROUP, VERSION, PLURAL)
def run_event(type: str | None, body: Any, namespace: str, name: str, **_: Any) -> None:
    if type == "DELETED":
        METRICS.forget(namespace, name)
        with _slots_guard:
            _slots.pop((namespace, name), None)
        return
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
    """Delete the run's Jobs and ConfigMaps (background propagation), then kopf releases the finalizer."""
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
