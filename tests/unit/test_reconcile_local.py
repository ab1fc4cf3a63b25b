"""The reconcile step with an executor that behaves like LocalExecutor (`plan.executor.Executor`), as
`synpo run` and `synpo operator --executor local` drive it: the planner retries failed stages, and stages
stopped by a suspend are forgotten (started again on resume), never failed."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

from synpo_operator.plan.executor import StageRecord
from synpo_operator.plan.planner import StagePhase, StageState
from synpo_operator.reconcile import reconcile

T0 = datetime(2025, 1, 1, tzinfo=UTC)

BODY = {
    "apiVersion": "synpo.dev/v1alpha1",
    "kind": "SynPORun",
    "metadata": {"name": "laptop", "namespace": "default", "uid": "u", "generation": 1},
    "spec": {
        "model": {"base": "org/m0"},
        "data": {"seed": "builtin:seed.jsonl", "corpus": "builtin:corpus.jsonl", "eval": "builtin:eval.jsonl"},
        "iterations": 1, "promptsPerIteration": 10, "pairsPerIteration": 5,
        "storage": {"uri": "/tmp/runs"}, "resources": {"gpusPerPod": 0}, "backoffLimit": 1,
    },
}


class FakeLocal:
    """Behaves like LocalExecutor: stages it started run until `finish`; killed or crashed ones are Failed."""

    def __init__(self, done: set[str], fail: set[str] | None = None):
        self.done = done  # shared "artifact store": survives a fresh executor
        self.fail = fail or set()
        self.running: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.starts: list[tuple[str, int]] = []

    def records(self):
        out = {k: StageRecord(k, StageState(StagePhase.SUCCEEDED),
                              result={"rows": 1, "winRate": 0.5} if k.endswith("evaluate") else {"rows": 1})
               for k in self.done}
        out.update({k: StageRecord(k, StageState(StagePhase.RUNNING, a)) for k, a in self.running.items()})
        out.update({k: StageRecord(k, StageState(StagePhase.FAILED, a, "exit 1")) for k, a in self.failed.items()})
        return out

    def start(self, starts):
        for start in starts:
            self.starts.append((start.stage.key, start.attempt))
            self.failed.pop(start.stage.key, None)
            self.running[start.stage.key] = start.attempt
        return [True] * len(starts)

    def stop(self):
        stopped = sorted(self.running)
        self.running.clear()  # forgotten, as LocalExecutor.stop forgets its stopped attempts
        return stopped

    def progress(self):
        for k in list(self.running):
            if k in self.fail:
                self.failed[k] = self.running.pop(k)
                self.fail.discard(k)
            else:
                self.done.add(k)
                del self.running[k]


def step(body, adapter, **kw):
    out = reconcile(body, adapter, T0, max_attempts=lambda run: run.spec.backoff_limit + 1, **kw)
    body["status"] = out.status
    return out


def test_local_run_succeeds_with_retry_of_a_failed_stage():
    body = copy.deepcopy(BODY)
    store: set[str] = set()
    local = FakeLocal(store, fail={"i0-keywords"})
    adapter = local
    for _ in range(20):
        out = step(body, adapter)
        if out.phase != "Running":
            break
        local.progress()
    assert out.phase == "Succeeded", body["status"]
    assert ("i0-keywords", 2) in local.starts  # retried by the planner (backoffLimit 1 → 2 attempts)
    assert {i["index"]: i for i in body["status"]["iterations"]}[1]["winRate"] == 0.5


def test_local_suspend_forgets_stopped_stages_and_resumes():
    body = copy.deepcopy(BODY)
    adapter = FakeLocal(set())
    step(body, adapter)
    adapter.progress()  # first stages done
    step(body, adapter)  # next ones started
    running = set(adapter.running)
    assert running
    body["spec"]["suspend"] = True
    out = step(body, adapter)
    assert out.phase == "Suspended" and set(out.stopped) == running
    assert not any(s["phase"] == "Failed" for s in body["status"]["stages"])  # stopped, not failed
    body["spec"]["suspend"] = False
    out = step(body, adapter)
    assert out.phase == "Running" and set(out.started) == running
