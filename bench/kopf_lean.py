"""The SynPORun controller the lean Kopf way: a prototype for measuring the Kopf decision (issue 16).

    .venv/bin/python bench/kopf_lean.py --namespace NS [--metrics-port 8080] [--workers 16]

`bench/operator.py --baseline-kopf-lean` starts it as the baseline beside `synpo operator`. What differs from
today's controller is only what drives the reconcile step: Kopf's watches, indexes and handler threads
instead of our informers (`kube.WatchCache`), work queue and resync. The step itself is today's
(`reconcile.reconcile` with the Jobs executor, the same status patch), so the benchmark compares drivers.

- `@kopf.on.event` for SynPORuns, and for Jobs labelled `synpo.dev/run` (their owning run is reconciled);
- `@kopf.index` for the runs, for the Jobs and pods of each run (keyed by namespace and run name) and for
  Kueue's Workloads (by Job uid: the operator watches them too); the
  Jobs executor reads them through its injected `request` (a GET of a run's Jobs or pods is answered from
  the index; everything else goes to the API server);
- no finalizers (only event and index handlers: Kopf adds none), no progress or diff-base annotations (event
  handlers store no state; progress storage is status-only anyway), Kopf posts only warnings of its own;
- Events of reconciles go through `kopf.event` (Kopf's poster), not our `EventPoster`.

What Kopf does not give, kept as small as it can be: one reconcile at a time per run (Kopf serialises
per object, but a run is reconciled from its own events and its Jobs'), the skip of our own status write's
echo, and delayed reconciles (retries with back-off, deadline/TTL) on Kopf's event loop. Not covered: the
local executor, concurrent-run caps, the new-run burst ordering and SynPOSchedules (`controller/`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextvars
import copy
import logging
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

import kopf  # noqa: E402

from synpo_operator import clock, kube  # noqa: E402
from synpo_operator.api.common import GROUP, VERSION  # noqa: E402
from synpo_operator.api.loader import SpecError  # noqa: E402
from synpo_operator.executors.job_status import WORKLOAD_JOB_UID_LABEL, pods_lag  # noqa: E402
from synpo_operator.executors.jobs import JobExecutor, jobs_spec_problems  # noqa: E402
from synpo_operator.executors.manifests import LABEL_RUN, RUN_KIND  # noqa: E402
from synpo_operator.metrics import METRICS, serve  # noqa: E402
from synpo_operator.reconcile import reconcile, run_from_body, status_differs, status_patch  # noqa: E402

RUNS = "synporuns"
RETRY_SECONDS = (0.5, 30.0)
log = logging.getLogger("synpo.kopf-lean")


# ---- indexes --------------------------------------------------------------------------------------------

@kopf.index(GROUP, VERSION, RUNS)
def run_index(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): kube.slim(dict(body))}


@kopf.index("batch", "v1", "jobs", labels={LABEL_RUN: kopf.PRESENT})
def job_index(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[LABEL_RUN]): kube.slim_job(dict(body))}


@kopf.index("", "v1", "pods", labels={LABEL_RUN: kopf.PRESENT})
def pod_index(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[LABEL_RUN]): kube.slim_pod(dict(body))}


@kopf.index("kueue.x-k8s.io", "v1beta2", "workloads", labels={WORKLOAD_JOB_UID_LABEL: kopf.PRESENT})
def workload_index(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """Kueue's Workloads by Job uid, as the operator's Workloads informer (empty without Kueue's API)."""
    return {(namespace, labels[WORKLOAD_JOB_UID_LABEL]): kube.slim(dict(body))}


class _State:
    """What the handlers share: Kopf's indexes (captured from the first handler call), the loop and
    executor for delayed reconciles, and per-run bookkeeping."""

    def __init__(self) -> None:
        self.indexes: dict[str, Any] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.executor: Any = None
        self.lock = threading.Lock()
        self.busy: set[tuple[str, str]] = set()
        self.again: set[tuple[str, str]] = set()
        self.own_rv: dict[tuple[str, str], str] = {}
        """run -> resourceVersion of our last status write (its echo needs no reconcile)."""
        self.written: dict[tuple[str, str], dict[str, Any]] = {}
        """run -> the body our last status write returned (newer than the index until the echo arrives)."""
        self.failures: dict[tuple[str, str], int] = {}
        self.timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self.requests: collections.Counter[str] = collections.Counter()
        """Requests of the reconciles by verb and resource (logged at exit; Kopf's own are not counted)."""


S = _State()


def _values(index_name: str, key: tuple[str, str]) -> list[dict[str, Any]]:
    index = S.indexes.get(index_name)
    return list(index.get(key, ())) if index is not None else []


def _rv(obj: dict[str, Any] | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _run_body(key: tuple[str, str]) -> dict[str, Any] | None:
    indexed = next(iter(_values("run_index", key)), None)
    written = S.written.get(key)
    if written is not None and _rv(written) <= _rv(indexed):
        S.written.pop(key, None)  # the index caught up
        written = None
    body = written if written is not None else indexed
    return copy.deepcopy(body) if body is not None else None


def indexed_request(method: str, path: str, body: Any = None, *, query: dict[str, Any] | None = None,
                    **kwargs: Any) -> Any:
    """`kube.request`, except that the Jobs executor's LIST of a run's Jobs or pods reads Kopf's index."""
    selector = (query or {}).get("labelSelector") or ""
    parts = path.strip("/").split("/")
    if method == "GET" and selector.startswith(LABEL_RUN + "=") and parts[-1] in ("jobs", "pods") \
            and "namespaces" in parts:
        key = (parts[parts.index("namespaces") + 1], selector.split("=", 1)[1])
        jobs = _values("job_index", key)
        if parts[-1] == "jobs":
            return {"items": jobs}
        pods = _values("pod_index", key)
        if not pods_lag(jobs, pods):
            return {"items": pods}
    if method == "GET" and parts[-1] == "workloads" and selector.startswith(WORKLOAD_JOB_UID_LABEL + " in ("):
        namespace = parts[parts.index("namespaces") + 1]
        uids = selector[len(WORKLOAD_JOB_UID_LABEL + " in ("):-1].split(",")
        return {"items": [w for uid in uids for w in _values("workload_index", (namespace, uid))]}
    S.requests[f"{method} {parts[-1] if 'namespaces' in parts else path}"] += 1
    return kube.request(method, path, body, query=query, **kwargs)


# ---- the reconcile --------------------------------------------------------------------------------------

def reconcile_run(key: tuple[str, str]) -> None:
    namespace, name = key
    body = _run_body(key)
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return
    meta = body["metadata"]
    try:
        run = run_from_body(body)
    except SpecError:
        run = None
    executor = JobExecutor(namespace, name, run=run, uid=meta.get("uid"), request=indexed_request)
    old = body.get("status") or {}
    with METRICS.reconcile_duration.time():
        outcome = reconcile(body, executor, clock.now(), executor_check=jobs_spec_problems, max_attempts=1)
    if status_differs(old, outcome.status):
        S.requests["PATCH status"] += 1
        patched = kube.request("PATCH", kube.run_path(namespace, name) + "/status",
                               {"status": status_patch(old, outcome.status)},
                               content_type="application/merge-patch+json")
        if isinstance(patched, dict):
            S.own_rv[key] = patched["metadata"].get("resourceVersion", "")
            S.written[key] = kube.slim(patched)
    for event in outcome.events:
        S.requests["POST events (kopf)"] += 1
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    METRICS.observe(namespace, name, outcome)
    if outcome.delete_run:
        kopf.event(body, type="Normal", reason="TTLExpired", message="ttlSecondsAfterFinished passed: deleting the run")
        kube.delete_run(namespace, name)
    elif outcome.requeue_after is not None:
        _later(key, outcome.requeue_after)


def trigger(key: tuple[str, str]) -> None:
    """Reconcile the run on this thread, or once more after the reconcile in progress (one at a time)."""
    with S.lock:
        if key in S.busy:
            S.again.add(key)
            return
        S.busy.add(key)
    try:
        while True:
            try:
                reconcile_run(key)
                S.failures.pop(key, None)
            except Exception as err:  # noqa: BLE001 - counted, logged, retried with back-off
                METRICS.error("reconcile")
                S.failures[key] = tries = S.failures.get(key, 0) + 1
                delay = min(RETRY_SECONDS[1], RETRY_SECONDS[0] * 2 ** (tries - 1))
                log.warning("reconcile of %s/%s failed (retry in %.1f s): %s", *key, delay, err)
                _later(key, delay)
            with S.lock:
                if key not in S.again:
                    S.busy.discard(key)
                    return
                S.again.discard(key)
    except BaseException:
        with S.lock:
            S.busy.discard(key)
        raise


def _later(key: tuple[str, str], seconds: float) -> None:
    """Reconcile the run after `seconds` (one pending timer per run: the earlier one wins)."""
    loop = S.loop
    if loop is None:
        return

    def arm() -> None:
        due = loop.time() + seconds
        current = S.timers.get(key)
        if current is not None and not current.cancelled() and current.when() <= due:
            return
        if current is not None:
            current.cancel()
        S.timers[key] = loop.call_at(due, fire)

    def fire() -> None:
        S.timers.pop(key, None)
        loop.run_in_executor(S.executor, contextvars.copy_context().run, trigger, key)

    loop.call_soon_threadsafe(arm)


# ---- handlers -------------------------------------------------------------------------------------------

def _capture(kwargs: dict[str, Any]) -> None:
    if not S.indexes:
        S.indexes.update({k: kwargs[k] for k in ("run_index", "job_index", "pod_index", "workload_index")})


@kopf.on.event(GROUP, VERSION, RUNS)
def run_event(type: str | None, event: dict[str, Any], namespace: str, name: str, **kwargs: Any) -> None:
    _capture(kwargs)
    key = (namespace, name)
    if type == "DELETED":
        for table in (S.own_rv, S.written, S.failures):
            table.pop(key, None)
        METRICS.forget(namespace, name)
        return
    meta = (event.get("object") or {}).get("metadata") or {}
    if type == "MODIFIED" and S.own_rv.get(key) == meta.get("resourceVersion"):
        return  # the echo of our own status write
    trigger(key)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_RUN: kopf.PRESENT})
def job_event(type: str | None, event: dict[str, Any], namespace: str, **kwargs: Any) -> None:
    _capture(kwargs)
    job = event.get("object") or {}
    owner = next((r["name"] for r in (job.get("metadata") or {}).get("ownerReferences") or []
                  if r.get("kind") == RUN_KIND and r.get("controller")), None)
    if owner:
        trigger((namespace, owner))


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.diffbase")
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = WORKERS
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    S.loop = asyncio.get_running_loop()
    S.executor = settings.execution.executor
    await S.loop.run_in_executor(None, kube.api_client)  # load the kubeconfig once, off the loop


@kopf.on.cleanup()
def report(**_: Any) -> None:
    log.info("requests of the reconciles: %s", dict(S.requests.most_common()))


WORKERS = 16


def main(argv: list[str] | None = None) -> int:
    global WORKERS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--namespace", "-n", action="append", default=[], metavar="NS")
    p.add_argument("--metrics-port", type=int, default=8080)
    p.add_argument("--health-port", type=int, default=0, help="Kopf's liveness endpoint (0: none)")
    p.add_argument("--workers", type=int, default=16, help="Kopf's handler threads (default 16)")
    p.add_argument("--verbose", "-v", action="store_true")
    args = p.parse_args(argv)
    WORKERS = args.workers
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        for noisy in ("kopf.objects", "kopf._core.engines.peering", "kopf._core.reactor.running",
                      "kopf._cogs.clients.watching", "kopf.activities.startup", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.metrics_port:
        serve(args.metrics_port)
    kopf.run(standalone=True, clusterwide=not args.namespace, namespaces=args.namespace,
             liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
