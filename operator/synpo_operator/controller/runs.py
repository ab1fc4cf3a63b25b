"""The run controller: informers (`kube.WatchCache`) on the runs and on the Jobs and pods labelled
`synpo.dev/run` feed one de-duplicating `WorkQueue`; worker threads drain it, one run at a time, calling
the reconcile step and carrying out its outcome (status patch, Events, metrics, TTL deletion).

What queues a run:
- a change of the run, except the echo of our own status write (recognised by its resourceVersion);
- a change of the status of one of its Jobs, or a Job deleted;
- one of its pods getting stuck or unstuck (`executors.stuck`), or a FailedCreate Event on one of its Jobs;
- a resync pass over the cached runs every `resync_seconds`: runs past their deadline or TTL, and with the
  local executor every unsettled run (its processes send no events); every tenth pass every unsettled run;
- a run slot freed up (capacity glue, `app.py`); the TTL or deadline a reconcile computed; a failed
  reconcile (retried with back-off).

Informers run on every replica (a standby has a warm cache and its /readyz means something); workers and the
resync act only while this replica leads (`resume`, `pause`). Why not kopf handlers for runs: see
docs/operator.md (per-object state, a finalizer PATCH on every new run and a watch round trip per handler
cost more than the reconciles). Runs carry no finalizer: their Jobs are owned by them (garbage collection).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import clock, gitops, kube
from ..api.loader import SpecError
from ..clock import parse_time
from ..events import EventPoster
from ..executors.job_status import WORKLOAD_JOB_UID_LABEL
from ..executors.jobs import FAILED_CREATE_SELECTOR, JobExecutor
from ..executors.manifests import LABEL_RUN, RUN_KIND
from ..executors.stuck import pod_stuck
from ..metrics import Metrics
from ..reconcile import (
    Event,
    Outcome,
    active_seconds,
    merge_events,
    reconcile,
    run_from_body,
    status_differs,
    status_patch,
)
from ..schedule import SCHEDULE_LABEL
from ..workqueue import EVENT, LATER, NEW, WorkQueue
from .settings import Settings

log = logging.getLogger("synpo.operator")

LANES = {NEW: "new", EVENT: "event", LATER: "later"}
FULL_RESYNC_EVERY = 10
"""Every this many resync passes, every unsettled run is reconciled (not only those with a deadline due)."""

Body = dict[str, Any]


@dataclass
class _Deferred:
    """A new run's first reconcile during a burst: what its first status write must still carry."""

    start_time: str | None
    events: list[Event]


def _local_spec_problems(run: Any) -> list[str]:
    uri = run.spec.storage.uri
    if uri is None or ("://" in uri and not uri.startswith("file://")):
        return ["spec.storage: the local executor needs storage.uri set to a local directory "
                f"(got {'a volume' if uri is None else repr(uri)})"]
    return []


class RunController:
    """Reconciles SynPORuns. Callbacks (injected by `app.Operator`): `observe_run(body)` after every known
    change of a run (capacity index, schedules), `run_gone(namespace, name)` when a run is deleted,
    `admit(body) -> (ok, why)` before a run starts its first stage (None: no caps)."""

    def __init__(self, settings: Settings, metrics: Metrics, events: EventPoster, *,
                 observe_run: Callable[[Body], None] = lambda body: None,
                 run_gone: Callable[[str, str], None] = lambda namespace, name: None,
                 admit: Callable[[Body], tuple[bool, str]] | None = None):
        self.settings = settings
        self.metrics = metrics
        self.events = events
        self.observe_run = observe_run
        self.run_gone = run_gone
        self.admit = admit
        self.queue = WorkQueue(observe_wait=lambda lane, s: metrics.queue_wait.labels(lane=LANES[lane]).observe(s))
        metrics.queue_depth.set_function(lambda: len(self.queue))
        self.informers: dict[str, list[kube.WatchCache]] = {}
        self._own_writes: dict[tuple[str, str], str] = {}
        """run -> resourceVersion of our last status write: its watch echo needs no reconcile."""
        self._local: dict[tuple[str, str], Any] = {}
        """run -> its LocalExecutor (it owns the run's child processes); --executor local only."""
        self._deferred: dict[tuple[str, str], _Deferred] = {}
        self._kept: set[tuple[str, str]] = set()
        """Runs past their TTL that a GitOps tool would re-create (`gitops.kept_by`): told once, kept."""
        self._stopping = threading.Event()
        self.active = threading.Event()
        """Set while this replica leads: workers and the resync act only then (standby: informers only)."""
        self._started = False

    # ---- lifecycle -----------------------------------------------------------------------------------
    def start_informers(self) -> None:
        """Start the informers and wait for their first LIST (every existing run is queued once)."""
        self.events.hold = lambda: not self._stopping.is_set() and self.burst()
        self.informers = kube.start_informers(self.settings.scopes, {
            "runs": (None, kube.slim, self.on_run),
            "jobs": (LABEL_RUN, kube.slim_job, self.on_job),
            "pods": (LABEL_RUN, kube.slim_pod, self.on_pod),
            "events": (None, kube.slim_event, self.on_job_event),
            # JobSets (training on several nodes) only where JobSet is installed and granted; when it comes
            # later, the executor LISTs them and the full resync notices their changes
            **({"jobsets": (LABEL_RUN, kube.slim_job, self.on_job)}
               if all(kube.can_list("jobsets", ns) for ns in self.settings.scopes) else {}),
            # Kueue's Workloads (why a queued stage waits) likewise; without them the queued message is
            # Kueue-free and nothing needs re-reading
            **({"workloads": (WORKLOAD_JOB_UID_LABEL, kube.slim, self.on_workload)}
               if all(kube.can_list("workloads", ns) for ns in self.settings.scopes) else {}),
        }, index={"runs": SCHEDULE_LABEL}, fields={"events": FAILED_CREATE_SELECTOR})

    @property
    def synced(self) -> bool:
        return bool(self.informers) and all(c.synced.is_set() for cs in self.informers.values() for c in cs)

    def resume(self) -> None:
        """Reconcile (this replica leads): the workers drain what the informers queued meanwhile, and every
        cached run is queued once (another replica may have led since the events that queued them); a finished
        run's gauges come from the cache (the metrics dropped them while this replica stood by)."""
        if not self._started:
            self._started = True
            for i in range(self.settings.workers):
                threading.Thread(target=self._work, daemon=True, name=f"synpo-reconcile-{i}").start()
            threading.Thread(target=self._resync_loop, daemon=True, name="synpo-resync").start()
        else:
            for cache in self.informers.get("runs", ()):
                for body in cache.items():
                    meta = body.get("metadata") or {}
                    if not self.settings.watched(meta.get("namespace", "")):
                        continue
                    if settled(body):
                        status = body.get("status") or {}
                        self.metrics.observe_status(meta["namespace"], meta["name"], status.get("phase"), status)
                    else:
                        self.trigger(meta["namespace"], meta["name"], "leading again", LATER)
        self.queue.progressed()  # what waited while standing by is not the workers' doing
        self.active.set()

    def stalled(self) -> str | None:
        """Why the workers look wedged (liveness fails then), or None. A standby's workers are paused: fine."""
        if not self.active.is_set() or self._stopping.is_set():
            return None
        return self.queue.stalled(self.settings.stall_seconds)

    def pause(self) -> None:
        """Stop reconciling (leadership lost): a reconcile in flight finishes (its Job creates are
        create-if-absent, its status write is guarded by resourceVersion); no new one starts."""
        self.active.clear()

    def stop(self) -> None:
        self._stopping.set()
        self.queue.close()
        self.active.set()  # waiting workers wake up, find the queue closed and end
        kube.stop_informers()

    def runs_of_schedule(self, namespace: str, schedule: str) -> list[Body] | None:
        """The runs labelled with the schedule, from the runs informer (None when it is not running)."""
        cache = kube.informer("runs", namespace)
        return None if cache is None else cache.by_label(namespace, schedule)

    # ---- the queue -----------------------------------------------------------------------------------
    def trigger(self, namespace: str, name: str, why: str = "", lane: int = EVENT) -> None:
        """Queue a reconcile of the run (once, however often it is asked for before a worker takes it)."""
        log.debug("queue %s/%s: %s", namespace, name, why)
        self.queue.add((namespace, name), lane)

    def burst(self) -> bool:
        """New runs wait for a worker: their first Jobs go before writes that can wait."""
        return self.queue.waiting(NEW) > 0

    def _work(self) -> None:
        while self.active.wait() and (key := self.queue.get()) is not None:
            namespace, name = key  # type: ignore[misc]
            if not self.active.is_set():  # leadership lost while waiting for work: keep it for later
                self.queue.done(key)
                self.queue.add(key, LATER)
                continue
            try:
                with self.metrics.reconcile_duration.time():
                    outcome = self.reconcile_now(namespace, name)
                self.queue.forget(key)
                if outcome is not None and outcome.requeue_after is not None:
                    self.queue.add_after(key, outcome.requeue_after)  # TTL or deadline due then
            except kube.KubeError as err:
                if not err.conflict:
                    self._failed(key, err)
                else:  # the run changed since it was read (reconcile_now re-read it): again, at once
                    log.debug("%s/%s: status write conflicted; reconciling again", namespace, name)
                    self.queue.add(key, EVENT)
            except Exception as err:  # noqa: BLE001 - counted, logged, retried with back-off
                self._failed(key, err)
            finally:
                self.queue.done(key)

    def _failed(self, key: tuple[str, str], err: Exception) -> None:
        self.metrics.error("reconcile")
        delay = self.queue.add_rate_limited(key)  # back-off in the queue: 0.5 s doubling to 30 s
        log.warning("reconcile of %s/%s failed (retry in %.1f s): %s", *key, delay, err)

    def _resync_loop(self) -> None:
        passes = 0
        while not self._stopping.wait(self.settings.resync_seconds):
            if not self.active.is_set():
                continue
            passes += 1
            full = passes % FULL_RESYNC_EVERY == 0
            for cache in self.informers.get("runs", ()):
                for body in cache.items():
                    meta = body.get("metadata") or {}
                    if self.settings.watched(meta.get("namespace", "")) and self._resync_wanted(body, full):
                        self.trigger(meta["namespace"], meta["name"], "resync", LATER)

    def _resync_wanted(self, body: Body, full: bool) -> bool:
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            return False
        if settled(body):
            return ttl_expired(body) and gitops.kept_by(body) is None
        if full or self.settings.executor == "local":  # local processes send no events: they are polled
            return True
        deadline = (body.get("spec") or {}).get("activeDeadlineSeconds")
        active = active_seconds(body.get("status") or {}, clock.now())
        return deadline is not None and active is not None and active >= deadline

    # ---- informer callbacks --------------------------------------------------------------------------
    def on_run(self, type_: str, old: Body | None, new: Body) -> None:
        meta = new.get("metadata") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        if not self.settings.watched(namespace):
            return
        key = (namespace, name)
        if type_ == "DELETED":
            self._gone(namespace, name)
            return
        self.observe_run(new)
        if meta.get("deletionTimestamp"):
            return
        if type_ == "MODIFIED" and self._own_writes.get(key) == meta.get("resourceVersion"):
            return  # the echo of our own status write
        self.trigger(namespace, name, f"run {type_.lower()}", EVENT if (new.get("status") or {}).get("phase") else NEW)

    def _gone(self, namespace: str, name: str) -> None:
        """The run is deleted: its Jobs go by garbage collection (they are owned by it); local processes are
        stopped here."""
        key = (namespace, name)
        local = self._local.pop(key, None)
        if local is not None:
            local.stop()
        self._own_writes.pop(key, None)
        self.queue.forget(key)
        self._deferred.pop(key, None)
        self._kept.discard(key)
        self.metrics.forget(namespace, name)
        self.run_gone(namespace, name)

    def on_job(self, type_: str, old: Body | None, new: Body) -> None:
        meta = new.get("metadata") or {}
        if not self.settings.watched(meta.get("namespace", "")):
            return
        if (type_ == "MODIFIED" and old is not None and old.get("status") == new.get("status")
                and (old.get("metadata") or {}).get("deletionTimestamp") == meta.get("deletionTimestamp")):
            return  # nothing a reconcile reads changed
        owner = next((r["name"] for r in meta.get("ownerReferences") or []
                      if r.get("kind") == RUN_KIND and r.get("controller")), None)
        if owner:
            self.trigger(meta.get("namespace", ""), owner, f"job {type_.lower()}")

    def on_workload(self, type_: str, old: Body | None, new: Body) -> None:
        """Kueue changed its word on a Job of ours (admitted, evicted, the queue's message): reconcile its run."""
        meta = new.get("metadata") or {}
        namespace = meta.get("namespace", "")
        if type_ == "DELETED" or not self.settings.watched(namespace) or (
                old is not None and old.get("status") == new.get("status")):
            return
        for ref in meta.get("ownerReferences") or []:
            run = _run_of_job(namespace, ref.get("name", "")) if ref.get("kind") == "Job" else None
            if run:
                self.trigger(namespace, run, f"workload {meta.get('name')} {type_.lower()}")

    def on_pod(self, type_: str, old: Body | None, new: Body) -> None:
        """A pod's change matters to its run only when it gets stuck, changes why, or gets going again (the
        rest reaches the run through its Job's status)."""
        meta = new.get("metadata") or {}
        if type_ == "DELETED" or not self.settings.watched(meta.get("namespace", "")):
            return
        if (pod_stuck(old) if old is not None else None) == pod_stuck(new):
            return
        run = (meta.get("labels") or {}).get(LABEL_RUN)
        if run:
            self.trigger(meta.get("namespace", ""), run, f"pod {meta.get('name')} stuck or unstuck")

    def on_job_event(self, type_: str, old: Body | None, new: Body) -> None:
        """The Job controller could not create a pod (a FailedCreate Event): reconcile the Job's run."""
        involved = new.get("involvedObject") or {}
        namespace = involved.get("namespace") or (new.get("metadata") or {}).get("namespace", "")
        if type_ == "DELETED" or not self.settings.watched(namespace):
            return
        run = _run_of_job(namespace, involved.get("name", ""))
        if run:
            self.trigger(namespace, run, f"FailedCreate on Job {involved.get('name')}")

    # ---- executors -----------------------------------------------------------------------------------
    def _executor_for(self, body: Body) -> tuple[Any, Any, Any]:
        """(executor, executor_check, max_attempts) for the run."""
        meta = body.get("metadata") or {}
        namespace, name, uid = meta.get("namespace", "default"), meta["name"], meta.get("uid")
        try:
            run = run_from_body(body)
        except SpecError:
            run = None
        if self.settings.executor == "local":
            # local processes are not retried by anyone else: the planner retries up to backoffLimit times
            return (self._local_executor(run, namespace, name), _local_spec_problems,
                    lambda r: r.spec.backoff_limit + 1)
        executor = JobExecutor(namespace, name, run=run, uid=uid)
        return executor, executor.spec_problems, 1

    def _local_executor(self, run: Any, namespace: str, name: str) -> Any:
        """The run's LocalExecutor; None while the spec is unusable locally (reconcile reports it)."""
        current = self._local.get((namespace, name))
        if run is None or _local_spec_problems(run):
            return current
        if current is None:
            from ..executors.local import LocalExecutor

            current = self._local[(namespace, name)] = LocalExecutor(run.spec, name=name, namespace=namespace)
        else:
            current.spec = run.spec
        return current

    # ---- one reconcile -------------------------------------------------------------------------------
    def reconcile_now(self, namespace: str, name: str) -> Outcome | None:
        key = (namespace, name)
        body = kube.get_run(namespace, name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return None
        old = body.get("status") or {}
        held = None if old else self._deferred.get(key)
        # A burst of new runs (a thousand applied at once) is bound by the API server: while new runs wait, a
        # run never reconciled gets one Job and nothing else; its other ready stages, its first status write
        # (with the startTime of this reconcile) and its Events (merged) come with its next reconcile, queued
        # behind every new run and event.
        burst = not old and held is None and self.burst()
        executor, check, attempts = self._executor_for(body)
        admit = (lambda: self.admit(body)) if self.admit is not None else None
        outcome = reconcile({**body, "status": {"startTime": held.start_time}} if held else body, executor,
                            clock.now(), executor_check=check, max_attempts=attempts, admit=admit,
                            max_starts=1 if burst else None)
        events = outcome.events
        if burst and outcome.started:
            self.metrics.burst_deferrals.inc()
            self._deferred[key] = _Deferred(outcome.status.get("startTime"), outcome.events)
            self.observe_run({**body, "status": outcome.status})
            self.queue.add(key, LATER)
            events = []
        elif status_differs(old, outcome.status):
            # guarded by the resourceVersion read: a status written meanwhile (another replica that led
            # before us, a stale cache) is never overwritten by an older view; 409 → re-read and retry
            rv = (body.get("metadata") or {}).get("resourceVersion")
            try:
                patched = kube.patch_run_status(namespace, name, status_patch(old, outcome.status),
                                                resource_version=rv)
            except kube.KubeError as err:
                if err.conflict:
                    kube.refresh_run(namespace, name)
                raise
            if patched:
                self._own_writes[key] = (patched.get("metadata") or {}).get("resourceVersion", "")
            self.observe_run(patched or {**body, "status": outcome.status})
            if held is not None:
                events = merge_events([*held.events, *events])
                self._deferred.pop(key, None)
        for started in outcome.started:
            log.info("%s/%s: created Job for stage %s", namespace, name, started)
        for event in events:
            self.events.post(body, event.type, event.reason, event.message)
        self.metrics.observe(namespace, name, outcome)
        keeper = gitops.kept_by(body) if outcome.delete_run else None
        if keeper is not None and key not in self._kept:
            self._kept.add(key)
            log.info("%s/%s: ttlSecondsAfterFinished passed; kept, as %s would re-create it", namespace, name, keeper)
            self.events.post(body, "Normal", "TTLKeptForGitOps",
                             f"ttlSecondsAfterFinished passed, but {keeper} would re-create the run (and start it "
                             "again) if it were deleted: kept; remove it from Git (with prune) to delete it")
        elif outcome.delete_run and keeper is None:
            log.info("%s/%s: ttlSecondsAfterFinished passed; deleting the run", namespace, name)
            self.events.post(body, "Normal", "TTLExpired", "ttlSecondsAfterFinished passed: deleting the run")
            kube.delete_run(namespace, name)
        return outcome


def _run_of_job(namespace: str, job_name: str) -> str | None:
    """The run a Job of ours belongs to, from the Jobs informer (None: not one of ours, or not seen yet)."""
    jobs = kube.informer("jobs", namespace)
    job = jobs.get(namespace, job_name) if jobs is not None else None
    return ((job or {}).get("metadata") or {}).get("labels", {}).get(LABEL_RUN)


def ttl_expired(body: Body) -> bool:
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    ttl = spec.get("ttlSecondsAfterFinished")
    done = parse_time(status.get("completionTime"))
    return ttl is not None and done is not None and (clock.now() - done).total_seconds() >= ttl


def settled(body: Body) -> bool:
    """Finished and up to date: nothing for the resync to do but the TTL."""
    status = body.get("status") or {}
    return (status.get("phase") in ("Succeeded", "Failed")
            and status.get("observedGeneration") == (body.get("metadata") or {}).get("generation"))
