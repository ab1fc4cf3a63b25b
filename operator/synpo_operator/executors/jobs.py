"""The Kubernetes Jobs executor: one Job (and its ConfigMap) per stage, found again by label.

Every method is idempotent and holds no state between calls: the cluster is the state. Creates are
create-if-absent (409 AlreadyExists means another reconcile, or an earlier operator process, already did it),
so killing the operator at any point never leads to a duplicate Job.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..api.run import SynPORun
from ..kube import KubeError, request
from ..plan.planner import StagePhase, StageState, Start
from ..reconcile import StageRecord, job_record, now_utc
from .manifests import LABEL_RUN, LABEL_STAGE_KEY, render_stage

Request = Callable[..., Any]


def _owned_by(obj: dict[str, Any], uid: str | None) -> bool:
    if not uid:
        return True
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid for r in refs)


def _is_local_path(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def jobs_spec_problems(run: SynPORun) -> list[str]:
    """Spec checks only the Jobs executor needs (the API server cannot know where stages run)."""
    problems = []
    uri = run.spec.storage.uri
    if uri is not None and _is_local_path(uri):
        problems.append(f"spec.storage.uri: {uri!r} is a local path, which stage pods cannot share; use "
                        "storage.volume (a PersistentVolumeClaim) or an object-store URI such as s3://bucket/runs")
    return problems


class JobExecutor:
    """Runs the stages of one SynPORun as batch/v1 Jobs in the run's namespace."""

    def __init__(self, namespace: str, name: str, *, run: SynPORun | None = None, uid: str | None = None,
                 request: Request = request, clock: Callable[[], datetime] = now_utc):
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
    def _pods(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods"

    @property
    def _config_maps(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/configmaps"

    @property
    def _selector(self) -> str:
        return f"{LABEL_RUN}={self.name}"

    def _list(self, path: str) -> list[dict[str, Any]]:
        items = (self._request("GET", path, query={"labelSelector": self._selector}) or {}).get("items") or []
        return [i for i in items if _owned_by(i, self.uid)]

    # ---- Executor ---------------------------------------------------------------------------------
    def jobs(self) -> list[dict[str, Any]]:
        """The run's Jobs that are not being deleted."""
        return [j for j in self._list(self._jobs) if not (j.get("metadata") or {}).get("deletionTimestamp")]

    def records(self) -> dict[str, StageRecord]:
        jobs = self.jobs()
        if not jobs:
            return {}
        pods = (self._request("GET", self._pods, query={"labelSelector": self._selector}) or {}).get("items") or []
        by_job: dict[str, list[dict[str, Any]]] = {}
        for pod in pods:
            for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
                if ref.get("kind") == "Job":
                    by_job.setdefault(ref.get("uid"), []).append(pod)
        now = self._clock()
        out: dict[str, StageRecord] = {}
        for job in jobs:
            rec = job_record(job, by_job.get((job.get("metadata") or {}).get("uid"), []), now)
            labels = (job.get("metadata") or {}).get("labels") or {}
            if LABEL_STAGE_KEY not in labels:
                continue
            # with several attempts of one stage (operator-level retries), the newest wins
            old = out.get(rec.key)
            if old is None or rec.state.attempts >= old.state.attempts:
                out[rec.key] = rec
        return out

    def observe(self) -> dict[str, StageState]:
        return {key: rec.state for key, rec in self.records().items()}

    def results(self) -> dict[str, dict[str, Any]]:
        return {key: rec.result for key, rec in self.records().items()
                if rec.state.phase is StagePhase.SUCCEEDED and rec.result}

    def start(self, start: Start) -> bool:
        """Create the stage's ConfigMap and Job unless they exist; True when the Job was created now."""
        if self.run is None:
            raise RuntimeError("JobExecutor.start needs the run")
        config_map, job = render_stage(self.run, start, uid=self.uid)
        try:
            self._request("POST", self._config_maps, config_map)
        except KubeError as err:
            if not err.conflict:
                raise
            self._refresh_config_map(config_map)
        try:
            self._request("POST", self._jobs, job)
        except KubeError as err:
            if err.conflict:
                return False
            raise
        self.created.append(job["metadata"]["name"])
        return True

    def _refresh_config_map(self, wanted: dict[str, Any]) -> None:
        """An existing ConfigMap with other content (the spec changed while the stage was not running)."""
        path = f"{self._config_maps}/{wanted['metadata']['name']}"
        current = self._request("GET", path)
        have = ((current or {}).get("metadata") or {}).get("annotations") or {}
        want = wanted["metadata"]["annotations"]
        if have != want or (current or {}).get("data") != wanted["data"]:
            self._request("PATCH", path, {"metadata": {"annotations": want}, "data": wanted["data"]},
                          content_type="application/merge-patch+json")

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
        return stopped

    def delete_all(self) -> list[str]:
        """Delete every Job and ConfigMap of the run (run deletion); returns the Job names deleted."""
        deleted = []
        for job in self._list(self._jobs):
            if self._delete(f"{self._jobs}/{job['metadata']['name']}"):
                deleted.append(job["metadata"]["name"])
        for cm in self._list(self._config_maps):
            self._delete(f"{self._config_maps}/{cm['metadata']['name']}")
        return deleted
