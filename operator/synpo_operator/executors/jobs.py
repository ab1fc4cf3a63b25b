"""The Kubernetes Jobs executor: one Job per stage (it carries the stage config), found again by label.

Every method is idempotent and holds no state between calls: the cluster is the state. Creates are
create-if-absent (409 AlreadyExists means another reconcile, or an earlier operator process, already did it),
so killing the operator at any point never leads to a duplicate Job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from typing import Any

from .. import clock as _clock
from ..api.common import JOBSET_API_VERSION
from ..api.run import SynPORun
from ..clock import parse_time
from ..kube import KubeError, WatchCache, collection_path, informer, request
from ..modelinfo import capacity_problems, model_problems
from ..plan.executor import StageRecord, StageRefused
from ..plan.graph import PREFLIGHT_KEY, stage_graph
from ..plan.planner import Start
from .job_status import WORKLOAD_JOB_UID_LABEL, job_record, jobset_record, owned_by, pods_lag
from .jobset_manifest import COMPLETION_INDEX_ANNOTATION, LABEL_JOBSET_NAME
from .manifests import (
    ANNOTATION_STUCK_FAILED_AT,
    ANNOTATION_STUCK_FAILURE,
    LABEL_RUN,
    LABEL_STAGE_KEY,
    render_stage,
    run_fields_in,
    stage_config_problems,
    uses_jobset,
)
from .stuck import FAILED_CREATE, awaits_pods, spec_fields, stage_stuck, stuck_failure

Request = Callable[..., Any]
log = logging.getLogger("synpo.operator")

FAILED_CREATE_SELECTOR = f"involvedObject.kind=Job,reason={FAILED_CREATE}"
"""The Events the operator reads (and, with informers, watches): the Job controller's refused pod creations."""
EVENTS_AFTER_SECONDS = 5.0
"""Without an Events informer, a Job's Events are listed only once it has had this long to make a pod."""


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def refusal_message(kind: str, err: KubeError) -> str:
    """What a user reads when the API server refuses a stage's Job: its own words, and the run's fields behind
    the Job fields it names."""
    body = err.body if isinstance(err.body, dict) else {}
    said = str(body.get("message") or err.body)
    causes = [str(c.get("field")) for c in (body.get("details") or {}).get("causes") or [] if isinstance(c, dict)]
    fields = run_fields_in(" ".join([said, *causes]))  # a policy's fieldPath comes only as a cause
    where = ("; set by " + ", ".join(fields)) if fields else \
        "; it names no field the run sets: see docs/troubleshooting.md, 'A stage's Job is refused'"
    return f"the API server refused its {kind} (HTTP {err.status} {err.reason or 'Invalid'}): {said}{where}"


def _start_pool() -> ThreadPoolExecutor:
    """Threads that create the Jobs of independent stages at the same time."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="synpo-start")
        return _pool


def _may_have_pods(job: dict[str, Any]) -> bool:
    """False only for a Job that never started a pod (no start time, counts or finished condition)."""
    status = job.get("status") or {}
    if any(status.get(k) for k in ("active", "succeeded", "failed", "ready", "startTime", "completionTime")):
        return True
    return any(c.get("type") in ("Complete", "Failed", "SuccessCriteriaMet", "FailureTarget")
               for c in status.get("conditions") or [])


def _is_local_path(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


_jobset_api_seen = False
"""JobSet's API answered once (the operator's API server): not asked again."""


def jobs_spec_problems(run: SynPORun) -> list[str]:
    """Spec checks only the Jobs executor needs (the API server cannot know where stages run)."""
    problems = []
    uri = run.spec.storage.uri
    if uri is not None and _is_local_path(uri):
        problems.append(f"spec.storage.uri: {uri!r} is a local path, which stage pods cannot share; use "
                        "storage.volume (a PersistentVolumeClaim) or an object-store URI such as s3://bucket/runs")
    # each stage's config travels in a Job annotation (256 KiB for all of them): refuse before starting any
    problems.extend(stage_config_problems(run))
    problems.extend(model_problems(run.spec))
    problems.extend(capacity_problems(run.spec))  # what each stage loads vs what its pod gets
    return problems


class JobExecutor:
    """Runs the stages of one SynPORun as batch/v1 Jobs in the run's namespace (`plan.executor.Executor`)."""

    def __init__(self, namespace: str, name: str, *, run: SynPORun | None = None, uid: str | None = None,
                 request: Request = request, clock: Callable[[], datetime] = _clock.now):
        self.namespace = namespace
        self.name = name
        self.run = run
        self.uid = uid
        self._request = request
        self._clock = clock
        self.created: list[str] = []
        """Names of the Jobs this executor created (for audits and tests)."""

    # ---- paths ------------------------------------------------------------------------------------
    @property
    def _jobs(self) -> str:
        return f"/apis/batch/v1/namespaces/{self.namespace}/jobs"

    @property
    def _jobsets(self) -> str:
        return f"/apis/{JOBSET_API_VERSION}/namespaces/{self.namespace}/jobsets"

    @property
    def _pods(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods"

    @property
    def _selector(self) -> str:
        return f"{LABEL_RUN}={self.name}"

    def _list(self, path: str) -> list[dict[str, Any]]:
        items = (self._request("GET", path, query={"labelSelector": self._selector}) or {}).get("items") or []
        return [i for i in items if owned_by(i, self.uid)]

    def _list_pods(self) -> list[dict[str, Any]]:
        """Pods are owned by their Jobs, not by the run: matched to Jobs by owner uid in `records`."""
        return (self._request("GET", self._pods, query={"labelSelector": self._selector}) or {}).get("items") or []

    def _cache(self, kind: str) -> WatchCache | None:
        """The operator's informer of Jobs or pods labelled synpo.dev/run covering the namespace, or None
        when this executor talks to an injected client (tests) or no informer runs (CLI, cache reads off)."""
        if self._request is not request:
            return None
        return informer(kind, self.namespace)

    def _cached_or_list(self, kind: str, path: str) -> list[dict[str, Any]]:
        cache = self._cache(kind)
        if cache is None:
            return self._list(path)
        return [i for i in cache.by_label(self.namespace, self.name) if owned_by(i, self.uid)]

    def spec_problems(self, run: SynPORun) -> list[str]:
        """`jobs_spec_problems`, and for training on several nodes, JobSet's API in the cluster: its absence
        is said naming the field, rather than leaving the run Running with nothing started."""
        global _jobset_api_seen
        problems = jobs_spec_problems(run)
        if (_jobset_api_seen and self._request is request) or not any(
                uses_jobset(run.spec, node) for node in stage_graph(run.spec)):
            return problems
        try:
            self._request("GET", f"/apis/{JOBSET_API_VERSION}")
            _jobset_api_seen = self._request is request
        except KubeError as err:
            if not err.not_found:
                raise
            problems.append(f"spec.resources.training.nodes is {run.spec.resources.training.nodes} but the cluster "
                            f"has no JobSet API ({JOBSET_API_VERSION}): install JobSet "
                            "(https://jobset.sigs.k8s.io) or set nodes: 1")
        return problems

    # ---- reading ----------------------------------------------------------------------------------
    def jobs(self) -> list[dict[str, Any]]:
        """The run's Jobs that are not being deleted (from the watch cache: no LIST per reconcile)."""
        return [j for j in self._cached_or_list("jobs", self._jobs)
                if not (j.get("metadata") or {}).get("deletionTimestamp")]

    def _uses_jobsets(self) -> bool:
        return self.run is not None and any(uses_jobset(self.run.spec, n) for n in stage_graph(self.run.spec))

    def jobsets(self) -> list[dict[str, Any]]:
        """The run's JobSets (training on several nodes) that are not being deleted; none for a run that
        makes none, or without JobSet's API (its absence is reported by `spec_problems`)."""
        if not self._uses_jobsets():
            return []
        cache = self._cache("jobsets")
        if cache is not None:
            found = [i for i in cache.by_label(self.namespace, self.name) if owned_by(i, self.uid)]
        else:
            try:
                found = self._list(self._jobsets)
            except KubeError as err:
                if err.not_found:
                    return []
                raise
        return [j for j in found if not (j.get("metadata") or {}).get("deletionTimestamp")]

    def _pods_for(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The run's pods; from the watch cache unless it has fewer finished pods than a Job counts (the
        pods' own watch lagging behind the Jobs'), then by a LIST."""
        if not any(_may_have_pods(j) for j in jobs):
            return []  # no pod was ever started (e.g. suspended, waiting for Kueue): nothing to read
        cache = self._cache("pods")
        if cache is None:
            return self._list_pods()
        pods = cache.by_label(self.namespace, self.name)
        if pods_lag(jobs, pods):
            pods = self._list_pods()
            for pod in pods:
                cache.put(pod)
        return pods

    def _failed_create_events(self, job: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
        """The FailedCreate Events of a Job that has no live pod: from the Events informer (a watch of
        FailedCreate Events only), else by a LIST for this Job once it has had time to make its pod."""
        uid = (job.get("metadata") or {}).get("uid")
        cache = self._cache("events")
        if cache is not None:
            return [e for e in cache.items() if (e.get("involvedObject") or {}).get("uid") == uid]
        created = parse_time((job.get("metadata") or {}).get("creationTimestamp"))
        if created is not None and (now - created).total_seconds() < EVENTS_AFTER_SECONDS:
            return []
        selector = f"{FAILED_CREATE_SELECTOR},involvedObject.uid={uid}"
        try:
            found = self._request("GET", f"/api/v1/namespaces/{self.namespace}/events",
                                  query={"fieldSelector": selector})
        except KubeError as err:  # no RBAC to read Events: the stage still fails at its deadline
            if err.status in (401, 403):
                return []
            raise
        return (found or {}).get("items") or []

    def _jobset_pods(self, jobsets: list[dict[str, Any]], pods: list[dict[str, Any]]) -> dict[str, list]:
        """The run's pods by JobSet name; LISTed again when a completed JobSet's rank-0 pod (its result) is
        not in the cache yet (the pods' watch behind the JobSets')."""
        def by_name(items: list[dict[str, Any]]) -> dict[str, list]:
            out: dict[str, list] = {}
            for pod in items:
                name = ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_JOBSET_NAME)
                if name:
                    out.setdefault(name, []).append(pod)
            return out

        found = by_name(pods)
        for js in jobsets:
            done = any(c.get("type") == "Completed" and c.get("status") == "True"
                       for c in (js.get("status") or {}).get("conditions") or [])
            own = found.get(js["metadata"]["name"], [])
            if done and not any(((p.get("metadata") or {}).get("annotations") or {}).get(
                    COMPLETION_INDEX_ANNOTATION) == "0" and (p.get("status") or {}).get("phase") == "Succeeded"
                    for p in own):
                return by_name(self._list_pods())
        return found

    def _workloads(self, jobs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Kueue's Workloads of the suspended Jobs, by Job uid: they say why a stage is not admitted. From the
        operator's Workloads informer; without one, a LIST (`synpo plan`, tests) unless the operator's other
        informers run (then it found Kueue's API unreadable at start). Without Kueue's API or RBAC: none."""
        uids = [j["metadata"]["uid"] for j in jobs
                if (j.get("spec") or {}).get("suspend") and (j.get("metadata") or {}).get("uid")]
        if not uids:
            return {}
        cache = self._cache("workloads")
        if cache is not None:
            return {uid: w for uid in uids for w in cache.by_label(self.namespace, uid)[:1]}
        if self._cache("jobs") is not None:
            return {}
        try:
            items = (self._request("GET", collection_path("workloads", self.namespace), query={
                "labelSelector": f"{WORKLOAD_JOB_UID_LABEL} in ({','.join(sorted(uids))})"}) or {}).get("items")
        except KubeError as err:
            if err.status not in (403, 404):
                raise
            log.debug("%s/%s: cannot read Kueue Workloads (%s)", self.namespace, self.name, err.status)
            return {}
        return {((w.get("metadata") or {}).get("labels") or {}).get(WORKLOAD_JOB_UID_LABEL): w
                for w in items or []}

    def records(self) -> dict[str, StageRecord]:
        jobs = self.jobs()
        jobsets = self.jobsets()
        if not jobs and not jobsets:
            return {}
        workloads = self._workloads(jobs) if self.run is not None and self.run.spec.queue_name else {}
        pods = self._pods_for(jobs) if jobs else []
        if jobsets and not pods:
            pods = (self._cache("pods").by_label(self.namespace, self.name) if self._cache("pods") is not None
                    else self._list_pods())
        by_job: dict[str, list[dict[str, Any]]] = {}
        for pod in pods:
            for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
                if ref.get("kind") == "Job":
                    by_job.setdefault(ref.get("uid"), []).append(pod)
        now = self._clock()
        out: dict[str, StageRecord] = {}
        for job in jobs:
            uid = (job.get("metadata") or {}).get("uid")
            own = by_job.get(uid, [])
            rec = job_record(job, own, now, workloads.get(uid))
            if not rec.finished:
                events = self._failed_create_events(job, now) if awaits_pods(job, own) else []
                stuck = stage_stuck(job, own, events)
                failure = None
                if stuck is not None and self.run is not None:
                    key = ((job.get("metadata") or {}).get("labels") or {}).get(LABEL_STAGE_KEY, "")
                    spec = self.run.spec
                    failure = stuck_failure(stuck, spec.stuck_pod_timeout_seconds, now, stage_key=key,
                                            fields=spec_fields(stuck, spec, key) if key == PREFLIGHT_KEY else ())
                failed = self._fail_stuck(job, failure, now) if failure is not None else None
                if failed is not None:
                    rec = job_record(failed, own, now)
                elif stuck is not None:
                    rec = replace(rec, stuck=stuck)
            labels = (job.get("metadata") or {}).get("labels") or {}
            if LABEL_STAGE_KEY not in labels:
                continue
            # with several attempts of one stage (operator-level retries), the newest wins
            old = out.get(rec.key)
            if old is None or rec.state.attempts >= old.state.attempts:
                out[rec.key] = rec
        by_jobset = self._jobset_pods(jobsets, pods) if jobsets else {}
        for js in jobsets:
            rec = jobset_record(js, by_jobset.get(js["metadata"]["name"], []), now)
            old = out.get(rec.key)
            if old is None or rec.state.attempts >= old.state.attempts:
                out[rec.key] = rec
        return out

    def _fail_stuck(self, job: dict[str, Any], message: str, now: datetime) -> dict[str, Any] | None:
        """Fail a stuck stage's Job (one merge PATCH): the cause in an annotation (the stage's failure message
        from now on) and activeDeadlineSeconds=1, so the Job controller fails it (DeadlineExceeded) and
        removes its pods. The Job stays, Failed, like any failed stage: deleting it retries the stage.
        None when RBAC refuses the patch (an older chart): the stage stays reported stuck until its deadline."""
        meta = job["metadata"]
        patch = {"metadata": {"annotations": {ANNOTATION_STUCK_FAILURE: message,
                                              ANNOTATION_STUCK_FAILED_AT: _clock.rfc3339(now)}},
                 "spec": {"activeDeadlineSeconds": 1}}
        try:
            patched = self._request("PATCH", f"{self._jobs}/{meta['name']}", patch,
                                    content_type="application/merge-patch+json")
        except KubeError as err:
            if err.status != 403:
                raise
            log.warning("%s/%s: cannot fail stuck Job %s (no RBAC to patch jobs): %s", self.namespace, self.name,
                        meta["name"], message)
            return None
        if not isinstance(patched, dict):
            return {**job, "metadata": {**meta, "annotations": {**(meta.get("annotations") or {}),
                                                                **patch["metadata"]["annotations"]}}}
        cache = self._cache("jobs")
        if cache is not None:
            cache.put(patched)  # the next reconcile sees the failure before the watch delivers it
        return patched

    # ---- the Executor contract ---------------------------------------------------------------------
    def start(self, starts: Sequence[Start]) -> list[bool]:
        """Create the Jobs of these (independent) stages, concurrently when there are several."""
        if len(starts) <= 1:
            return [self._create(s) for s in starts]
        futures = [_start_pool().submit(self._create, s) for s in starts]
        results, error = [], None
        for future in futures:
            try:
                results.append(future.result())
            except Exception as err:  # noqa: BLE001 - re-raised below once every create has finished
                results.append(False)
                error = error or err
        if error is not None:
            raise error
        return results

    def _create(self, start: Start) -> bool:
        """Create the stage's Job unless it exists (one write); True when the Job was created now."""
        if self.run is None:
            raise RuntimeError("JobExecutor.start needs the run")
        job = render_stage(self.run, start, uid=self.uid)
        is_jobset = job["kind"] == "JobSet"
        try:
            created = self._request("POST", self._jobsets if is_jobset else self._jobs, job)
        except KubeError as err:
            if err.conflict:
                return False
            if err.status in (400, 422):  # invalid, or denied by a policy: the same Job would be refused again
                raise StageRefused(start.stage.key, refusal_message(job["kind"], err)) from err
            raise
        self.created.append(job["metadata"]["name"])
        cache = self._cache("jobsets" if is_jobset else "jobs") if isinstance(created, dict) else None
        if cache is not None:
            cache.put(created)  # seen by this reconcile's status and the next one, before the watch has it
        return True

    def _delete(self, path: str) -> bool:
        try:
            self._request("DELETE", path, {"propagationPolicy": "Background"})
            return True
        except KubeError as err:
            if err.not_found:
                return False
            raise

    def stop(self) -> list[str]:
        """Delete the Jobs of unfinished stages (background propagation); finished Jobs stay."""
        stopped = []
        for job in self.jobs():
            rec = job_record(job, [], self._clock())
            if rec.finished:
                continue
            if self._delete(f"{self._jobs}/{job['metadata']['name']}"):
                stopped.append(rec.key)
        for js in self.jobsets():
            rec = jobset_record(js, [], self._clock())
            if not rec.finished and self._delete(f"{self._jobsets}/{js['metadata']['name']}"):
                stopped.append(rec.key)
        return stopped

    def discard(self, keys: Sequence[str]) -> None:
        """Delete the Jobs of these stages, finished or not; they are created again once gone."""
        for job in self.jobs():
            if ((job.get("metadata") or {}).get("labels") or {}).get(LABEL_STAGE_KEY) in keys:
                self._delete(f"{self._jobs}/{job['metadata']['name']}")

    def delete_all(self) -> list[str]:
        """Delete every Job and JobSet of the run (run deletion); returns the names deleted."""
        deleted = []
        for job in self._list(self._jobs):
            if self._delete(f"{self._jobs}/{job['metadata']['name']}"):
                deleted.append(job["metadata"]["name"])
        for js in self.jobsets():
            if self._delete(f"{self._jobsets}/{js['metadata']['name']}"):
                deleted.append(js["metadata"]["name"])
        return deleted
