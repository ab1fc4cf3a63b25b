"""The reconcile loop (reconcile.py) driving the Jobs executor against an in-memory API server."""

from __future__ import annotations

import copy
import itertools
import json
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from synpo_operator.api.conditions import run_conditions as build_conditions
from synpo_operator.api.results import merge_results, parse_summary
from synpo_operator.executors.job_status import job_record
from synpo_operator.executors.jobs import JobExecutor
from synpo_operator.kube import KubeError
from synpo_operator.metrics import Metrics
from synpo_operator.plan.planner import StagePhase
from synpo_operator.reconcile import (
    active_seconds,
    reconcile,
    run_from_body,
    status_differs,
    status_patch,
)

from .conftest import ROOT

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _field(obj: dict, path: str) -> str:
    for part in path.split("."):
        obj = (obj or {}).get(part) if isinstance(obj, dict) else None
    return "" if obj is None else str(obj)


class FakeKube:
    """Just enough of an API server for Jobs and Pods: create (409 on names), list by label,
    get, delete, merge-patch. Records every create."""

    def __init__(self):
        self.objects: dict[str, dict[str, dict]] = {}
        self.creates: list[str] = []
        self.deletes: list[str] = []
        self._uid = itertools.count(1)

    @staticmethod
    def _split(path: str) -> tuple[str, str | None]:
        parts = path.rstrip("/").split("/")
        if parts[-1] in ("jobs", "pods", "events", "jobsets", "workloads"):
            return path.rstrip("/"), None
        return "/".join(parts[:-1]), parts[-1]

    def __call__(self, method, path, body=None, *, query=None, content_type="application/json"):
        collection, name = self._split(path)
        store = self.objects.setdefault(collection, {})
        if method == "POST":
            obj = copy.deepcopy(body)
            name = obj["metadata"]["name"]
            if name in store:
                raise KubeError(method, path, 409, {"reason": "AlreadyExists"})
            obj["metadata"]["uid"] = f"uid-{next(self._uid)}"
            obj["metadata"].setdefault("creationTimestamp", ts(T0))
            obj.setdefault("status", {})
            store[name] = obj
            self.creates.append(f"{collection.rsplit('/', 1)[-1]}/{name}")
            return copy.deepcopy(obj)
        if method == "GET" and name is None:
            selector = (query or {}).get("labelSelector", "")
            if " in (" in selector:  # one set-based term: key in (a,b)
                key, values = selector.rstrip(")").split(" in (")
                items = [o for o in store.values()
                         if (o["metadata"].get("labels") or {}).get(key) in values.split(",")]
                return {"items": copy.deepcopy(items)}
            want = dict(kv.split("=", 1) for kv in selector.split(",") if kv)
            fields = dict(kv.split("=", 1) for kv in (query or {}).get("fieldSelector", "").split(",") if kv)
            items = [o for o in store.values()
                     if all((o["metadata"].get("labels") or {}).get(k) == v for k, v in want.items())
                     and all(_field(o, k) == v for k, v in fields.items())]
            return {"items": copy.deepcopy(items)}
        if name not in store:
            raise KubeError(method, path, 404, {"reason": "NotFound"})
        if method == "GET":
            return copy.deepcopy(store[name])
        if method == "DELETE":
            self.deletes.append(f"{collection.rsplit('/', 1)[-1]}/{name}")
            obj = store.pop(name)
            # background propagation: the job's pods go too
            for pod_name, pod in list(self.objects.get(collection.replace("/apis/batch/v1", "/api/v1")
                                                       .replace("/jobs", "/pods"), {}).items()):
                if any(r.get("uid") == obj["metadata"]["uid"] for r in pod["metadata"].get("ownerReferences", [])):
                    del self.objects[collection.replace("/apis/batch/v1", "/api/v1").replace("/jobs", "/pods")][pod_name]
            return {}
        if method == "PATCH":
            obj = store[name]
            for key, value in body.items():
                if isinstance(value, dict):
                    obj.setdefault(key, {}).update(value)
                else:
                    obj[key] = value
            return copy.deepcopy(obj)
        raise AssertionError(method)

    # ---- simulating the Job controller and kubelet ----
    def jobs(self, ns="ns") -> dict[str, dict]:
        return self.objects.get(f"/apis/batch/v1/namespaces/{ns}/jobs", {})

    def add_pod(self, job: dict, *, phase: str, exit_code: int | None = None, message: str | None = None,
                gpus: int = 0, started: datetime = T0, finished: datetime | None = None,
                disruption: bool = False, ns: str = "ns") -> None:
        n = len(self.objects.get(f"/api/v1/namespaces/{ns}/pods", {}))
        state: dict = {"running": {"startedAt": ts(started)}}
        if phase in ("Succeeded", "Failed"):
            state = {"terminated": {"exitCode": exit_code or 0, "startedAt": ts(started),
                                    "finishedAt": ts(finished or started + timedelta(seconds=60)),
                                    **({"message": message} if message else {})}}
        pod = {
            "metadata": {"name": f"{job['metadata']['name']}-{n}", "uid": f"pod-{n}",
                         "labels": job["spec"]["template"]["metadata"]["labels"],
                         "ownerReferences": [{"kind": "Job", "uid": job["metadata"]["uid"],
                                              "name": job["metadata"]["name"]}]},
            "spec": {"containers": [{"name": "stage", "resources": (
                {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {})}]},
            "status": {"phase": phase, "startTime": ts(started), "containerStatuses": [{"state": state}],
                       "conditions": ([{"type": "DisruptionTarget", "status": "True"}] if disruption else [])},
        }
        self.objects.setdefault(f"/api/v1/namespaces/{ns}/pods", {})[pod["metadata"]["name"]] = pod

    def finish(self, key: str, *, result: dict | None = None, run: str = "demo", gpus: int = 0,
               seconds: int = 60) -> None:
        job = self.jobs()[f"{run}-{key}"]
        shards = job["spec"].get("completions", 1)
        for _ in range(shards):
            self.add_pod(job, phase="Succeeded", message=json.dumps(result) if result else None, gpus=gpus,
                         finished=T0 + timedelta(seconds=seconds))
        job["status"] = {"startTime": ts(T0), "completionTime": ts(T0 + timedelta(seconds=seconds)),
                         "conditions": [{"type": "Complete", "status": "True"}]}

    def fail(self, key: str, *, exit_code: int = 1, message: str = "boom", run: str = "demo",
             retries: int = 2) -> None:
        job = self.jobs()[f"{run}-{key}"]
        for _ in range(retries + 1):
            self.add_pod(job, phase="Failed", exit_code=exit_code, message=message)
        job["status"] = {"startTime": ts(T0), "failed": retries + 1, "conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
             "message": "Job has reached the specified backoff limit"}]}


RUN_DOC = {
    "apiVersion": "synpo.dev/v1alpha1",
    "kind": "SynPORun",
    "metadata": {"name": "demo", "namespace": "ns", "uid": "run-uid", "generation": 1},
    "spec": {
        "model": {"base": "org/m0"},
        "data": {"seed": "s3://b/seed.jsonl", "corpus": "s3://b/corpus.jsonl", "eval": "s3://b/eval.jsonl"},
        "iterations": 1, "promptsPerIteration": 10, "pairsPerIteration": 5,
        "storage": {"uri": "s3://b/runs"},
        "resources": {"gpusPerPod": 2},
        "backoffLimit": 2,
    },
}


class Harness:
    """A run object, the fake API server, and a reconcile that writes status back like the handler does."""

    def __init__(self, **spec):
        self.kube = FakeKube()
        self.body = copy.deepcopy(RUN_DOC)
        self.body["spec"].update(spec)
        self.now = T0
        self.metrics = Metrics()
        self.writes = 0

    def executor(self):
        try:
            run = run_from_body(self.body)
        except Exception:  # noqa: BLE001
            run = None
        return JobExecutor("ns", "demo", run=run, uid="run-uid", request=self.kube, clock=lambda: self.now)

    def step(self, **kw):
        from synpo_operator.executors.jobs import jobs_spec_problems

        out = reconcile(self.body, self.executor(), self.now, executor_check=jobs_spec_problems, **kw)
        if status_differs(self.body.get("status"), out.status):
            self.writes += 1
            patch = status_patch(self.body.get("status"), out.status)
            status = {**(self.body.get("status") or {}), **patch}
            self.body["status"] = {k: v for k, v in status.items() if v is not None}
        self.metrics.observe("ns", "demo", out)
        return out

    @property
    def status(self):
        return self.body["status"]

    def job_names(self):
        return sorted(self.kube.jobs())


RESULTS = {
    "i0-keywords": {"rows": 100},
    "i0-prompt-generator": {"rows": 50},
    "i0-evaluate": {"winRate": 0.5, "score": 0.1, "report": "report.md"},
    "i1-prompts": {"rows": 10},
    "i1-base-responses": {"rows": 10},
    "i1-improver": {"rows": 30},
    "i1-refine": {"rows": 10},
    "i1-pairs": {"pairsKept": 7, "pairsTotal": 5},
    "i1-train": {"steps": 3},
    "i1-evaluate": {"winRate": 0.625, "lcWinRate": 0.6, "score": 0.3, "against": "M0", "n": 16,
                    "winRateLow": 0.386, "winRateHigh": 0.815, "judgeErrors": 1,
                    "vsM0N": 16, "vsM0WinRate": 0.625, "vsM0WinRateLow": 0.386, "vsM0WinRateHigh": 0.815,
                    "vsM0LcWinRate": 0.6, "vsReferencesN": 16, "vsReferencesWinRate": 0.25,
                    "vsReferencesWinRateLow": 0.102, "vsReferencesWinRateHigh": 0.495,
                    "vsReferencesLcWinRateReason": "length alone separates the verdicts",
                    "positionBiased": True, "vsM0PositionBiased": True, "vsM0PositionConsistency": 0.5,
                    "report": "report.md"},
}


def drive_to_success(h: Harness) -> list:
    outcomes = []
    for _ in range(30):
        out = h.step()
        outcomes.append(out)
        if out.phase == "Succeeded":
            return outcomes
        for key, job in list(h.kube.jobs().items()):
            stage_key = key.removeprefix("demo-")
            if not job["status"].get("conditions"):
                h.kube.finish(stage_key, result=RESULTS.get(stage_key), gpus=job["spec"]["template"]["spec"][
                    "containers"][0].get("resources", {}).get("limits", {}).get("nvidia.com/gpu") and 2 or 0)
        h.now += timedelta(seconds=60)
    raise AssertionError(f"no success: {h.status}")


def test_first_reconcile_creates_first_stages_and_status():
    h = Harness()
    out = h.step()
    assert out.phase == "Running"
    assert h.job_names() == ["demo-i0-evaluate", "demo-i0-keywords", "demo-i1-improver"]
    # one write per stage: the Job, which carries its stage config (no ConfigMap)
    assert sorted(h.kube.creates) == ["jobs/demo-i0-evaluate", "jobs/demo-i0-keywords", "jobs/demo-i1-improver"]
    st = h.status
    assert st["phase"] == "Running" and st["observedGeneration"] == 1
    assert st["startTime"] == ts(T0)
    assert st["iteration"] == 0 and st["stage"] == "evaluate,keywords"
    assert st["artifacts"] == "s3://b/runs/ns/demo"
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "StageRunning"
    assert conds["Failed"]["status"] == "False" and conds["Suspended"]["status"] == "False"
    assert all(c["observedGeneration"] == 1 for c in conds.values())
    assert [s["name"] for s in st["stages"]] == ["i0-keywords", "i0-evaluate", "i1-improver"]
    assert {e.reason for e in out.events} == {"StageStarted"}
    assert sorted(out.started) == ["i0-evaluate", "i0-keywords", "i1-improver"]


def test_max_starts_starts_the_first_ready_stages_and_leaves_the_rest_for_later():
    h = Harness()
    out = h.step(max_starts=1)
    assert out.started == ["i0-keywords"] and h.job_names() == ["demo-i0-keywords"]
    out = h.step()  # the next reconcile starts the others, once
    assert sorted(out.started) == ["i0-evaluate", "i1-improver"]
    assert h.job_names() == ["demo-i0-evaluate", "demo-i0-keywords", "demo-i1-improver"]
    assert not h.step().started


def test_merge_events_keeps_one_event_per_reason_in_order():
    from synpo_operator.reconcile import Event, merge_events

    merged = merge_events([Event("Normal", "StageStarted", "started stage a (Job x)"),
                           Event("Warning", "StageFailed", "b failed"),
                           Event("Normal", "StageStarted", "started stages c (Job y), d (Job z)")])
    assert merged == [Event("Normal", "StageStarted", "started stage a (Job x); started stages c (Job y), d (Job z)"),
                      Event("Warning", "StageFailed", "b failed")]


def test_reconcile_is_idempotent_and_restart_safe():
    h = Harness()
    h.step()
    creates = list(h.kube.creates)
    writes = h.writes
    for _ in range(3):
        out = h.step()  # a fresh executor each time, as after an operator restart
        assert not out.started and not out.events
    assert h.kube.creates == creates
    assert h.writes == writes  # no status write when nothing changed
    # a racing second operator: create of an existing Job is a 409, not a duplicate
    from synpo_operator.plan import stage_graph
    from synpo_operator.plan.planner import Start

    node = next(n for n in stage_graph(run_from_body(h.body).spec) if n.key == "i0-keywords")
    assert h.executor().start([Start(node)]) == [False]
    assert h.kube.creates == creates


def test_run_to_success_with_results_and_summaries():
    h = Harness()
    outcomes = drive_to_success(h)
    st = h.status
    assert st["phase"] == "Succeeded"
    assert st["completionTime"]
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Succeeded"]["status"] == "True"
    assert conds["Succeeded"]["reason"] == "RunSucceeded"
    stages = {s["name"]: s for s in st["stages"]}
    assert all(s["phase"] == "Succeeded" for s in stages.values())
    assert stages["i1-pairs"]["result"]["pairsKept"] == 7
    # sharded stage: per-shard summaries merged; gpuSeconds = GPUs × pod time
    assert stages["i1-train"]["result"]["gpuSeconds"] == 2 * 60
    iterations = {i["index"]: i for i in st["iterations"]}
    assert iterations[0]["winRate"] == 0.5 and iterations[0]["model"] == "org/m0"
    one = iterations[1]
    assert one["pairsKept"] == 7 and one["pairsTotal"] == 5
    assert one["winRate"] == 0.625 and one["lcWinRate"] == 0.6 and one["score"] == 0.3
    # every figure names its opponent, n and interval; opponents are never mixed
    assert one["against"] == "M0" and one["n"] == 16 and one["winRateLow"] == 0.386 and one["judgeErrors"] == 1
    figures = {c["against"]: c for c in one["comparisons"]}
    assert figures["M0"] == {"against": "M0", "n": 16, "winRate": 0.625, "winRateLow": 0.386,
                             "winRateHigh": 0.815, "lcWinRate": 0.6}
    assert figures["references"]["winRate"] == 0.25 and "lcWinRate" not in figures["references"]
    assert figures["references"]["lcWinRateReason"].startswith("length alone")
    assert stages["i1-evaluate"]["result"]["vsM0PositionBiased"] is True  # the judge's bias, in the status
    assert one["model"] == "s3://b/runs/ns/demo/iter-1/train/model"
    assert one["gpuSeconds"] > 0
    assert st["latestWinRate"] == 0.625 and st["latestWinRateAgainst"] == "M0" and st["latestWinRateN"] == 16
    assert st["report"] == "s3://b/runs/ns/demo/report.md"  # the evaluate stage's report, under the artifacts
    reasons = [e.reason for o in outcomes for e in o.events]
    for o in outcomes:  # one Event per reason and reconcile
        assert len({e.reason for e in o.events}) == len(o.events)
    started = " ".join(e.message for o in outcomes for e in o.events if e.reason == "StageStarted")
    succeeded = " ".join(e.message for o in outcomes for e in o.events if e.reason == "StageSucceeded")
    assert all(f"{s} (Job demo-{s})" in started and s in succeeded for s in stages)
    assert reasons[-1] == "RunSucceeded"
    # every Job was created exactly once
    jobs = [c for c in h.kube.creates if c.startswith("jobs/")]
    assert len(jobs) == len(set(jobs)) == 10
    # metrics followed
    text = h.metrics.render().decode()
    assert 'synpo_runs{phase="Succeeded"} 1.0' in text
    assert 'synpo_pairs_kept{iteration="1",namespace="ns",run="demo"} 7.0' in text
    assert 'synpo_win_rate{against="M0",iteration="1",namespace="ns",run="demo"} 0.625' in text
    assert 'synpo_win_rate{against="references",iteration="1",namespace="ns",run="demo"} 0.25' in text
    assert 'synpo_win_rate_bound{against="M0",bound="low",iteration="1",namespace="ns",run="demo"} 0.386' in text
    assert 'synpo_judge_errors{iteration="1",namespace="ns",run="demo"} 1.0' in text
    assert 'synpo_stage_duration_seconds_count{outcome="Succeeded",stage="train"} 1.0' in text
    assert 'synpo_stage_gpu_seconds_total{stage="train"} 120.0' in text
    # settled: further reconciles change nothing
    before = copy.deepcopy(st)
    h.now += timedelta(hours=1)
    out = h.step()
    assert h.status == before and not out.events


def test_stage_failure_fails_run_with_reason_and_stops_others():
    h = Harness()
    h.step()
    h.kube.fail("i0-keywords", exit_code=1, message='{"error": "corpus.jsonl: line 3 is not JSON"}')
    out = h.step()
    st = h.status
    assert st["phase"] == "Failed"
    failed = {c["type"]: c for c in st["conditions"]}["Failed"]
    assert failed["status"] == "True" and failed["reason"] == "StageFailed"
    assert "i0-keywords" in failed["message"] and "BackoffLimitExceeded" in failed["message"]
    assert "exited with code 1" in failed["message"] and "line 3 is not JSON" in failed["message"]
    stage = {s["name"]: s for s in st["stages"]}["i0-keywords"]
    assert stage["phase"] == "Failed" and stage["attempts"] == 3  # 3 pods, all failed
    # the other running stages were stopped, the failed Job kept for inspection
    assert h.job_names() == ["demo-i0-keywords"]
    assert {e.reason for e in out.events} >= {"StageFailed", "StagesStopped"}
    assert out.retries == {"i0-keywords": 3}
    text = h.metrics.render().decode()
    assert 'synpo_stage_failures_total{stage="keywords"} 1.0' in text
    assert 'synpo_stage_retries_total{stage="keywords"} 3.0' in text
    # settled, no retry storm
    creates = list(h.kube.creates)
    for _ in range(3):
        assert not h.step().started
    assert h.kube.creates == creates


def test_deleting_a_failed_job_retries_the_stage():
    h = Harness()
    h.step()
    h.kube.fail("i0-keywords")
    h.step()
    assert h.status["phase"] == "Failed"
    h.kube("DELETE", "/apis/batch/v1/namespaces/ns/jobs/demo-i0-keywords")
    out = h.step()
    assert out.phase == "Running" and "i0-keywords" in out.started


def test_disruptions_do_not_count():
    h = Harness()
    h.step()
    job = h.kube.jobs()["demo-i0-keywords"]
    h.kube.add_pod(job, phase="Failed", exit_code=137, disruption=True)
    h.kube.add_pod(job, phase="Running")
    out = h.step()
    stage = {s["name"]: s for s in h.status["stages"]}["i0-keywords"]
    assert stage["phase"] == "Running" and stage["attempts"] == 1
    assert not out.retries


def test_suspend_and_resume_never_redoes_finished_stages():
    h = Harness()
    h.step()
    h.kube.finish("i0-keywords", result={"rows": 1})
    h.step()
    h.body["spec"]["suspend"] = True
    h.body["metadata"]["generation"] = 2
    out = h.step()
    st = h.status
    assert st["phase"] == "Suspended"
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Suspended"]["status"] == "True" and conds["Suspended"]["observedGeneration"] == 2
    assert h.job_names() == ["demo-i0-keywords"]  # only the finished Job stays
    assert sorted(out.stopped) == ["i0-evaluate", "i0-prompt-generator", "i1-improver"]
    assert [s["name"] for s in st["stages"]] == ["i0-keywords"]
    assert not h.step().started  # nothing starts while suspended
    h.body["spec"]["suspend"] = False
    h.body["metadata"]["generation"] = 3
    out = h.step()
    assert sorted(out.started) == ["i0-evaluate", "i0-prompt-generator", "i1-improver"]
    assert "i0-keywords" not in out.started
    assert {c["type"]: c for c in h.status["conditions"]}["Suspended"]["reason"] == "Resumed"
    assert any(e.reason == "Resumed" for e in out.events)


def test_finished_stage_recorded_in_status_is_not_redone_when_its_job_vanishes():
    h = Harness()
    h.step()
    h.kube.finish("i0-keywords", result={"rows": 1})
    h.step()
    h.kube("DELETE", "/apis/batch/v1/namespaces/ns/jobs/demo-i0-keywords")
    out = h.step()
    assert "i0-keywords" not in out.started
    stage = {s["name"]: s for s in h.status["stages"]}["i0-keywords"]
    assert stage["phase"] == "Succeeded" and stage["result"]["rows"] == 1


def test_run_deadline():
    h = Harness(activeDeadlineSeconds=600)
    h.step()
    h.now += timedelta(seconds=601)
    out = h.step()
    assert h.status["phase"] == "Failed"
    assert {c["type"]: c for c in h.status["conditions"]}["Failed"]["reason"] == "DeadlineExceeded"
    assert h.job_names() == [] and sorted(out.stopped) == ["i0-evaluate", "i0-keywords", "i1-improver"]


def test_ttl_after_finished():
    h = Harness(ttlSecondsAfterFinished=300)
    drive_to_success(h)
    out = h.step()
    assert not out.delete_run and 0 < out.requeue_after <= 300
    h.now += timedelta(seconds=301)
    assert h.step().delete_run


@pytest.mark.parametrize("change, field", [
    ({"pairsPerIteration": 50}, "pairsPerIteration must not exceed promptsPerIteration"),
    ({"storage": {"uri": "./runs"}}, "spec.storage.uri"),
    ({"training": {"loss": "ipo"}}, "spec.training.loss"),
    # a global batch smaller than the training processes (2 nodes x 8 GPUs) never starts a stage
    ({"resources": {"gpusPerPod": 8, "training": {"nodes": 2}}, "training": {"batchSize": 8}},
     "spec.training.batchSize: the global batch of 8 is split evenly across the 16 training processes"),
    # every stage config travels in a Job annotation (256 KiB for all of them)
    ({"env": [{"name": f"PAD_{i}", "value": "x" * 4000} for i in range(60)]}, "stage i0-keywords: its config is"),
    # a pod that cannot hold what its stage loads (plan/fit.py): refused, never OOM-killed an hour in
    ({"model": {"base": "org/Llama-3-8B"}, "resources": {"gpusPerPod": 2, "memory": "16Gi"}},
     "spec.resources.memory: stages i0-prompt-generator, i0-evaluate, i1-prompts, i1-base-responses and 4 more: "
     "memory needs up to 95 GiB per pod, more than the 16 GiB it gives"),
])
def test_invalid_spec_fails_once_without_jobs(change, field):
    h = Harness(**change)
    out = h.step()
    st = h.status
    assert st["phase"] == "Failed" and h.job_names() == []
    failed = {c["type"]: c for c in st["conditions"]}["Failed"]
    assert failed["reason"] == "InvalidSpec" and field in failed["message"]
    assert [e.reason for e in out.events] == ["InvalidSpec"]
    writes = h.writes
    again = h.step()
    assert not again.events and h.writes == writes  # no storm: nothing new to say


def test_delete_all_deletes_only_the_runs_jobs():
    h = Harness()
    h.step()
    paths = []

    def recording(method, path, body=None, **kw):
        paths.append((method, path))
        return h.kube(method, path, body, **kw)

    deleted = JobExecutor("ns", "demo", uid="run-uid", request=recording).delete_all()
    assert sorted(deleted) == ["demo-i0-evaluate", "demo-i0-keywords", "demo-i1-improver"]
    assert h.job_names() == [] and sorted(h.kube.deletes) == [f"jobs/{n}" for n in sorted(deleted)]
    assert not any("configmaps" in path for _, path in paths)


def test_invalid_spec_fixed_by_a_new_generation_runs():
    h = Harness(pairsPerIteration=50)
    h.step()
    h.body["spec"]["pairsPerIteration"] = 5
    h.body["metadata"]["generation"] = 2
    out = h.step()
    assert out.phase == "Running" and out.started


def test_kueue_queued_jobs_make_the_run_pending():
    h = Harness(queueName="team-a")
    h.step()
    assert all(j["spec"]["suspend"] is True for j in h.kube.jobs().values())
    out = h.step()
    assert out.phase == "Pending"
    assert {c["type"]: c for c in h.status["conditions"]}["Ready"]["reason"] == "Queued"
    for job in h.kube.jobs().values():  # Kueue admits: it, not the operator, flips suspend
        job["spec"]["suspend"] = False
    assert h.step().phase == "Running"
    assert all(j["spec"]["suspend"] is False for j in h.kube.jobs().values())  # never touched


def workload_for(h: Harness, job_name: str, **conditions: tuple[str, str, str]) -> dict:
    """The Workload Kueue makes for a Job (label kueue.x-k8s.io/job-uid), with (status, reason, message)
    conditions."""
    job = h.kube.jobs()[job_name]
    wl = {"metadata": {"name": f"job-{job_name}-1a2b3", "namespace": "ns",
                       "labels": {"kueue.x-k8s.io/job-uid": job["metadata"]["uid"]}},
          "status": {"conditions": [{"type": t, "status": st, "reason": r, "message": m}
                                    for t, (st, r, m) in conditions.items()]}}
    h.kube.objects.setdefault("/apis/kueue.x-k8s.io/v1beta2/namespaces/ns/workloads", {})[
        wl["metadata"]["name"]] = wl
    return wl


NO_QUOTA = "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor gpu, 2 more needed"


def test_queued_run_shows_kueues_message():
    h = Harness(queueName="team-a")
    h.step()
    for name in h.kube.jobs():
        workload_for(h, name, QuotaReserved=("False", "Pending", NO_QUOTA))
    out = h.step()
    ready = {c["type"]: c for c in h.status["conditions"]}["Ready"]
    assert out.phase == "Pending" and ready["reason"] == "Queued"
    assert ready["message"].startswith("waiting for admission of demo-i0-evaluate: couldn't assign flavors")
    assert ready["message"].count("2 more needed") == 3  # one per queued Job
    stage = {s["name"]: s for s in h.status["stages"]}["i1-improver"]
    assert stage["phase"] == "Running" and stage["message"] == NO_QUOTA
    assert out.requeue_after is None  # Workloads are watched (controller/runs.py): no polling


def test_queued_without_kueue_api_still_says_queued():
    h = Harness(queueName="team-a")
    h.step()

    def no_kueue(method, path, body=None, **kw):
        if "kueue.x-k8s.io" in path:
            raise KubeError(method, path, 404, {"reason": "NotFound"})
        return h.kube(method, path, body, **kw)

    out = reconcile(h.body, JobExecutor("ns", "demo", run=run_from_body(h.body), uid="run-uid", request=no_kueue,
                                        clock=lambda: h.now), h.now)
    assert out.phase == "Pending" and "waiting for admission of demo-i0-evaluate; demo-i0-keywords" in str(
        out.status["conditions"])


def test_preempted_stage_returns_to_the_queue_without_counting_as_a_failure():
    h = Harness(queueName="team-a", backoffLimit=0)
    h.step()
    job = h.kube.jobs()["demo-i1-improver"]
    job["spec"]["suspend"] = False  # admitted
    h.kube.add_pod(job, phase="Running", gpus=2)
    job["status"] = {"startTime": ts(T0), "active": 1}
    h.now += timedelta(seconds=30)
    h.step()
    assert {s["name"]: s for s in h.status["stages"]}["i1-improver"]["phase"] == "Running"
    # Kueue preempts: it suspends the Job; the Job controller deletes the pod, which a kubelet marks Failed
    job["spec"]["suspend"] = True
    pod = next(iter(h.kube.objects["/api/v1/namespaces/ns/pods"].values()))
    pod["metadata"]["deletionTimestamp"] = ts(h.now)
    pod["status"]["phase"] = "Failed"
    pod["status"]["containerStatuses"] = [{"state": {"terminated": {"exitCode": 143, "startedAt": ts(T0),
                                                                     "finishedAt": ts(h.now)}}}]
    job["status"] = {"conditions": [{"type": "Suspended", "status": "True", "reason": "JobSuspended"}]}
    workload_for(h, "demo-i1-improver",
                 Evicted=("True", "Preempted", "Preempted to accommodate a workload due to prioritization"),
                 QuotaReserved=("False", "Pending", NO_QUOTA))
    h.now += timedelta(seconds=5)
    out = h.step()
    stage = {s["name"]: s for s in h.status["stages"]}["i1-improver"]
    assert stage["phase"] == "Running" and stage["attempts"] == 1 and not out.retries
    assert stage["message"].startswith("evicted (Preempted): Preempted to accommodate")
    assert out.phase == "Pending" and not any(e.reason == "StageFailed" for e in out.events)
    # the pod is gone; Kueue admits the Job again and it completes: the run carries on
    del h.kube.objects["/api/v1/namespaces/ns/pods"][pod["metadata"]["name"]]
    job["spec"]["suspend"] = False
    h.kube.finish("i1-improver", gpus=2)
    for stage_job in h.kube.jobs().values():
        stage_job["spec"]["suspend"] = False
    assert h.step().phase == "Running"
    assert {s["name"]: s for s in h.status["stages"]}["i1-improver"]["phase"] == "Succeeded"


def test_run_deadline_does_not_count_time_queued():
    h = Harness(queueName="team-a", activeDeadlineSeconds=600)
    out = h.step()  # Jobs created suspended at T0: the run starts queued, its deadline clock stands still
    assert out.phase == "Pending" and h.status["startTime"] == h.status["queuedSince"] == ts(T0)
    assert out.requeue_after is None  # nothing due while queued
    h.now += timedelta(seconds=5000)  # long past the deadline in wall-clock time, all of it queued
    assert h.step().phase == "Pending"
    assert active_seconds(h.status, h.now) == 0
    for job in h.kube.jobs().values():
        job["spec"]["suspend"] = False  # admitted
    out = h.step()
    assert out.phase == "Running" and h.status["queuedSeconds"] == 5000 and "queuedSince" not in h.status
    assert out.requeue_after == pytest.approx(600.5)  # the deadline, in active time
    h.now += timedelta(seconds=300)
    h.kube.finish("i0-keywords")  # the next stage is queued again: its wait does not count either
    assert h.step().phase == "Running"
    for key in ("i0-evaluate", "i1-improver"):
        h.kube.finish(key)
    h.now += timedelta(seconds=1)
    out = h.step()
    assert out.phase == "Pending" and h.status["queuedSince"] == ts(h.now)
    h.now += timedelta(seconds=1000)
    for job in h.kube.jobs().values():
        job["spec"]["suspend"] = False
    assert h.step().phase == "Running" and h.status["queuedSeconds"] == 6000
    h.now += timedelta(seconds=298)
    assert h.step().phase == "Running"  # 599 s active
    h.now += timedelta(seconds=2)
    out = h.step()
    failed = {c["type"]: c for c in h.status["conditions"]}["Failed"]
    assert out.phase == "Failed" and failed["reason"] == "DeadlineExceeded"


def test_active_seconds():
    t = ts(T0)
    assert active_seconds({}, T0) is None
    assert active_seconds({"startTime": t}, T0 + timedelta(seconds=90)) == 90
    assert active_seconds({"startTime": t, "queuedSeconds": 30}, T0 + timedelta(seconds=90)) == 60
    assert active_seconds({"startTime": t, "queuedSeconds": 30, "queuedSince": ts(T0 + timedelta(seconds=60))},
                          T0 + timedelta(seconds=90)) == 30


def test_terminating_job_is_not_observed_and_not_duplicated():
    h = Harness()
    h.step()
    h.kube.jobs()["demo-i0-keywords"]["metadata"]["deletionTimestamp"] = ts(T0)
    out = h.step()
    assert "i0-keywords" not in out.started  # create answered 409: waits for the old Job to go
    assert [c for c in h.kube.creates if c == "jobs/demo-i0-keywords"] == ["jobs/demo-i0-keywords"]


def test_status_is_valid_against_the_model_and_crd_types():
    h = Harness()
    drive_to_success(h)
    from synpo_operator.api.run import SynPORunStatus

    SynPORunStatus.model_validate(h.status)
    assert json.loads(json.dumps(h.status)) == h.status


# ---- pure helpers ---------------------------------------------------------------------------------------

def test_parse_summary():
    assert parse_summary('{"rows": 3, "winRate": 0.5, "nested": {"x": 1}, "ok": true}') == {
        "rows": 3, "winRate": 0.5, "ok": True}
    assert parse_summary("Traceback...\nValueError: bad") is None
    assert parse_summary("log line\n{\"rows\": 2}") == {"rows": 2}
    assert parse_summary("") is None and parse_summary(None) is None
    assert parse_summary("[1, 2]") is None


def test_merge_results():
    assert merge_results([{"rows": 2, "score": 0.5, "model": "a"}, {"rows": 3, "score": 1.0}]) == {
        "rows": 5, "score": 0.75, "model": "a", "shards": 2}
    assert merge_results([]) is None
    assert merge_results([{"rows": 1}]) == {"rows": 1}
    # shards' seconds add up (GPU time is additive) on every path: the Jobs executor and the local store
    from synpo_workloads.store import merge_results as store_merge

    shards = [{"rows": 2, "seconds": 10.0}, {"rows": 3, "seconds": 30.5}]
    assert merge_results(shards)["seconds"] == 40.5
    # shards generate side by side: the stage's throughput is the sum of theirs, its tokens too
    gen = merge_results([{"generatedTokens": 100, "tokensPerSecond": 10.0}, {"generatedTokens": 50, "tokensPerSecond": 5.0}])
    assert gen["generatedTokens"] == 150 and gen["tokensPerSecond"] == 15.0
    assert store_merge is merge_results


def test_job_record_running_and_queued():
    job = {"metadata": {"name": "demo-i1-train", "uid": "j", "labels": {"synpo.dev/stage-key": "i1-train"}},
           "spec": {"suspend": True}, "status": {}}
    rec = job_record(job, [], T0)
    assert rec.state.phase is StagePhase.RUNNING and rec.queued and rec.key == "i1-train"


def test_job_record_deadline_failure_message():
    job = {"metadata": {"name": "x", "uid": "j", "labels": {"synpo.dev/stage-key": "i1-train"}},
           "spec": {}, "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                                  "message": "Job was active longer than specified deadline"}]}}
    rec = job_record(job, [], T0)
    assert rec.state.phase is StagePhase.FAILED and rec.state.message.startswith("DeadlineExceeded")


def test_conditions_keep_transition_times():
    first = build_conditions("Running", "StageRunning", "x", 1, [], T0)
    later = build_conditions("Running", "StageRunning", "y", 1, first, T0 + timedelta(minutes=5))
    assert [c["lastTransitionTime"] for c in later] == [c["lastTransitionTime"] for c in first]
    done = build_conditions("Succeeded", "RunSucceeded", "z", 1, later, T0 + timedelta(minutes=9))
    ready = {c["type"]: c for c in done}["Ready"]
    assert ready["status"] == "True" and ready["lastTransitionTime"] == ts(T0 + timedelta(minutes=9))


def test_metrics_never_carry_secrets_and_forget_runs():
    h = Harness(env=[{"name": "HF_TOKEN", "secretKeyRef": {"name": "hf-secret-name", "key": "tok"}}])
    drive_to_success(h)
    text = h.metrics.render().decode()
    assert "hf-secret-name" not in text and "HF_TOKEN" not in text
    h.metrics.forget("ns", "demo")
    text = h.metrics.render().decode()
    assert 'run="demo"' not in text
    assert 'synpo_runs{phase="Succeeded"} 0.0' in text


def test_examples_reconcile_first_step():
    doc = yaml.safe_load((ROOT / "examples" / "cluster-llama3.yaml").read_text())
    doc["metadata"].update(uid="u", generation=1)
    kube = FakeKube()
    run = run_from_body(doc)
    out = reconcile(doc, JobExecutor("alignment", "llama3-synpo", run=run, uid="u", request=kube), T0)
    assert out.phase == "Pending"  # Jobs created suspended for Kueue
    assert sorted(out.started) == ["i0-evaluate", "i0-keywords", "i1-improver"]


def test_a_job_the_api_server_refuses_fails_the_run_once_naming_the_run_field():
    """A 422 on a Job create (a field the API server or a cluster policy refuses) is not retried forever: the run
    fails with JobRefused, naming the stage and the run field behind the Job field; a new generation retries."""
    h = Harness()
    refuse = {"demo-i0-keywords"}
    kube = h.kube

    def refusing(method, path, body=None, **kw):
        if method == "POST" and body and body["metadata"]["name"] in refuse:
            raise KubeError(method, path, 422, {"reason": "Invalid", "message": (
                'Job.batch "demo-i0-keywords" is invalid: spec.template.spec.tolerations[0].key: '
                'Invalid value: "x/../y": a qualified name must consist of alphanumeric characters')})
        return kube(method, path, body, **kw)

    h.kube = refusing  # type: ignore[assignment]
    h.job_names = lambda: sorted(kube.jobs())  # type: ignore[method-assign]
    out = h.step()
    st = h.status
    assert out.phase == "Failed" and st["phase"] == "Failed"
    failed = {c["type"]: c for c in st["conditions"]}["Failed"]
    assert failed["reason"] == "JobRefused"
    assert failed["message"].startswith("stage i0-keywords: the API server refused its Job (HTTP 422 Invalid)")
    assert "set by spec.resources.tolerations" in failed["message"]
    assert [e.reason for e in out.events] == ["JobRefused"]
    assert h.job_names() == []  # the stages started beside it are stopped
    writes, creates = h.writes, list(kube.creates)
    again = h.step()
    assert again.phase == "Failed" and not again.events and h.writes == writes and kube.creates == creates
    refuse.clear()
    h.body["metadata"]["generation"] = 2
    out = h.step()
    assert out.phase == "Running" and "i0-keywords" in out.started


def test_refusals_name_the_run_fields_behind_the_job_fields():
    from synpo_operator.executors.manifests import run_fields_in

    assert run_fields_in("spec.template.spec.nodeSelector: Invalid value; "
                         "spec.template.spec.containers[0].resources.limits: Invalid") == [
        "spec.resources.nodeSelector", "spec.resources (cpu, memory, GPUs)"]
    assert run_fields_in("spec.replicatedJobs[0].template.spec.template.spec.affinity.nodeAffinity: x") == [
        "spec.resources.affinity"]
    assert run_fields_in("metadata.labels: Invalid value: \"kueue.x-k8s.io/queue-name\"") == ["spec.queueName"]
    assert run_fields_in("denied by policy require-team-label") == []


def test_stuck_metric_follows_the_stagestuck_condition():
    from types import SimpleNamespace

    metrics = Metrics()

    def observe(stuck_reason):
        conds = [] if stuck_reason is None else [{"type": "StageStuck", "status": "True", "reason": stuck_reason,
                                                  "message": "m", "lastTransitionTime": ts(T0)}]
        metrics.observe("ns", "r", SimpleNamespace(phase="Running", status={"phase": "Running", "conditions": conds},
                                                   started=[], retries={}, transitions=[]))
        return [line for line in metrics.render().decode().splitlines() if line.startswith("synpo_run_stuck{")]

    assert observe("Unschedulable") == ['synpo_run_stuck{namespace="ns",reason="Unschedulable",run="r"} 1.0']
    assert observe("ImagePullFailed") == ['synpo_run_stuck{namespace="ns",reason="ImagePullFailed",run="r"} 1.0']
    assert observe(None) == []
    observe("Unschedulable")
    metrics.forget("ns", "r")
    assert 'synpo_run_stuck{' not in metrics.render().decode()


def test_the_report_uri_stays_under_the_artifacts():
    from synpo_operator.api.evaluation import report_uri

    assert report_uri("pvc://ws/ns/r", [{"report": "report.md"}, None, {"rows": 3}]) == "pvc://ws/ns/r/report.md"
    assert report_uri("s3://b/ns/r/", [{"report": "a/./report.md"}]) == "s3://b/ns/r/a/report.md"
    for bad in ("../../etc/passwd", "/etc/passwd", "a/../../x", 5):
        assert report_uri("s3://b/ns/r", [{"report": bad}]) is None, bad
    assert report_uri("s3://b/ns/r", [{"reportError": "OSError: read-only"}]) is None
