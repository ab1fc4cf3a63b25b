"""SynPOSchedule against the real control plane (synpo dev-cluster; kwok plays kubelet).

The operator runs as a subprocess with `SYNPO_CLOCK_FILE` pointing at a file the test writes: scheduled
times come by moving that clock, never by sleeping. Stage results are faked through the run template's
`synpo.dev/test-pod-annotations` annotation (copied onto every run, then onto the stage pods).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from synpo_devcluster.client import ApiError, KubeClient
from synpo_operator.schedule import run_name

from .test_operator import RUNS, Operator, conditions, crds, events, run_doc, wait_for_event, wait_until  # noqa: F401 - crds: fixture

SCHEDULES = "/apis/synpo.dev/v1alpha1/namespaces/{ns}/synposchedules"
HOLD = {"*": {"synpo.dev/fake-hold": "true"}}            # runs stay active
FAIL_FAST = {"keywords": {"synpo.dev/fake-exit-code": "2"}}  # runs fail at their first stage
FAST = {"*": {"synpo.dev/fake-duration": "100ms"}}


class Clock:
    """The operator's clock (SYNPO_CLOCK_FILE): frozen until the test moves it."""

    def __init__(self, path: Path):
        self.path = path
        self.now = datetime.now(UTC).replace(microsecond=0)
        self.start = self.now
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(self.now.strftime("%Y-%m-%dT%H:%M:%SZ"))
        os.replace(tmp, self.path)  # atomic: the operator never reads half a time

    def set(self, moment: datetime) -> None:
        assert moment >= self.now, "time only moves forward"
        self.now = moment
        self._write()

    def hour(self, n: int) -> datetime:
        """The n-th full hour after the clock's start (schedules here run hourly: "0 * * * *")."""
        base = self.start.replace(minute=0, second=0) + timedelta(hours=1)
        return base + timedelta(hours=n - 1)


def schedule_doc(name: str, *, pods: dict | None = None, run: dict | None = None, **spec) -> dict:
    """An hourly schedule whose runs are test_operator's small 1-iteration run."""
    template = run_doc("x", pods={**FAST, **(pods or {})}, **(run or {}))
    doc = {
        "apiVersion": "synpo.dev/v1alpha1",
        "kind": "SynPOSchedule",
        "metadata": {"name": name},
        "spec": {
            "schedule": "0 * * * *",
            "concurrencyPolicy": "Allow",
            "runTemplate": {"metadata": {"annotations": template["metadata"]["annotations"],
                                         "labels": {"team": "alignment"}},
                            "spec": template["spec"]},
        },
    }
    doc["spec"].update(spec)
    return doc


def pod_annotations(pods: dict) -> dict:
    """The template annotations for these fake pod behaviours (over test_operator's default results)."""
    return run_doc("x", pods={**FAST, **pods})["metadata"]["annotations"]


def runs(kube: KubeClient, ns: str, schedule: str | None = None) -> dict[str, dict]:
    query = {"labelSelector": f"synpo.dev/schedule={schedule}"} if schedule else {}
    items = kube.get(RUNS.format(ns=ns), **query)["items"]
    return {r["metadata"]["name"]: r for r in items if not r["metadata"].get("deletionTimestamp")}


def get_schedule(kube: KubeClient, ns: str, name: str) -> dict:
    return kube.get(f"{SCHEDULES.format(ns=ns)}/{name}")


def wait_schedule(kube, ns, name, predicate, timeout: float = 30) -> dict:
    return kube.wait_for(f"{SCHEDULES.format(ns=ns)}/{name}", lambda o: predicate(o.get("status") or {}),
                         timeout=timeout, interval=0.25)


def assert_subset(expected, actual, path: str = "spec") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), path
        for key, value in expected.items():
            assert key in actual, f"{path}.{key} missing"
            assert_subset(value, actual[key], f"{path}.{key}")
    else:
        assert expected == actual, f"{path}: {actual!r} != {expected!r}"


def phase(run: dict) -> str | None:
    return (run.get("status") or {}).get("phase")


def is_active(run: dict) -> bool:
    """Holds a slot: started a stage and not finished."""
    st = run.get("status") or {}
    return bool(st.get("startTime") or st.get("stages")) and st.get("phase") not in ("Succeeded", "Failed")


class RunAudit:
    """Polls the namespace's runs: every name seen, and the most runs active at once."""

    def __init__(self, kube: KubeClient, ns: str):
        self.kube, self.ns = kube, ns
        self.names: set[str] = set()
        self.max_active = 0
        self.active_sets: list[set[str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                items = self.kube.get(RUNS.format(ns=self.ns))["items"]
                self.names |= {r["metadata"]["name"] for r in items}
                active = {r["metadata"]["name"] for r in items if is_active(r)}
                self.max_active = max(self.max_active, len(active))
                if active:
                    self.active_sets.append(active)
            except Exception:  # noqa: BLE001 - polling is best-effort
                pass
            time.sleep(0.1)

    def stop(self) -> RunAudit:
        self._stop.set()
        self._thread.join(5)
        return self


@pytest.fixture
def clock(tmp_path) -> Clock:
    return Clock(tmp_path / "clock")


@pytest.fixture
def start_operator(dev_cluster, crds, namespace, tmp_path, clock,  # noqa: F811
                   monkeypatch) -> Iterator[Callable[..., Operator]]:
    started: list[Operator] = []
    monkeypatch.setenv("SYNPO_CLOCK_FILE", str(clock.path))  # inherited by the operator subprocess

    def start(*args: str) -> Operator:
        log_dir = tmp_path / f"op{len(started)}"
        log_dir.mkdir()
        op = Operator(dev_cluster.kubeconfig, namespace, log_dir, extra_args=args)
        op.start()
        started.append(op)
        return op

    try:
        yield start
    finally:
        for op in started:
            if op.proc and op.proc.poll() is None:
                op.kill9()  # faster than a graceful stop; nothing is lost (tested in test_operator)
        kube = dev_cluster.client()
        # the namespace fixture deletes the namespace: release our finalizers so that it can go
        for path in (SCHEDULES.format(ns=namespace), RUNS.format(ns=namespace)):
            try:
                for obj in kube.get(path).get("items", []):
                    if obj["metadata"].get("finalizers"):
                        kube.patch(f"{path}/{obj['metadata']['name']}", {"metadata": {"finalizers": None}})
            except ApiError:
                pass


def create_schedule(kube: KubeClient, ns: str, doc: dict) -> dict:
    return kube.post(SCHEDULES.format(ns=ns), doc)


def metric_line(op: Operator, needle: str, timeout: float = 10) -> str:
    def find() -> str | None:
        return next((line for line in op.metrics().splitlines() if line.startswith(needle)), None)

    return wait_until(f"metric {needle}", find, timeout=timeout)


# ---- tests ----------------------------------------------------------------------------------------------

def test_runs_start_on_schedule_from_the_template(kube, namespace, start_operator, clock):
    op = start_operator()
    doc = schedule_doc("hourly", pods=HOLD)
    sched = create_schedule(kube, namespace, doc)
    first = clock.hour(1)
    st = wait_schedule(kube, namespace, "hourly", lambda s: conditions(s).get("Ready", {}).get("reason") == "Waiting")
    assert conditions(st["status"])["Ready"]["message"] == f"next run at {first:%Y-%m-%dT%H:%M:%SZ}"
    time.sleep(1.5)
    assert not runs(kube, namespace), "a run before its scheduled time"

    clock.set(first + timedelta(seconds=10))
    name = run_name("hourly", first)
    run = wait_until("the scheduled run", lambda: runs(kube, namespace).get(name))
    owner = run["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("SynPOSchedule", sched["metadata"]["uid"], True)
    assert run["metadata"]["labels"] == {"synpo.dev/schedule": "hourly", "team": "alignment"}
    assert run["metadata"]["annotations"]["synpo.dev/scheduled-at"] == f"{first:%Y-%m-%dT%H:%M:%SZ}"
    assert_subset(doc["spec"]["runTemplate"]["spec"], run["spec"])  # the template, defaults filled in
    st = wait_schedule(kube, namespace, "hourly", lambda s: s.get("active") == [name])["status"]
    assert st["lastScheduleTime"] == f"{first:%Y-%m-%dT%H:%M:%SZ}"
    # the run is reconciled like any other: its first stage starts
    wait_until("the run running", lambda: phase(runs(kube, namespace)[name]) == "Running")
    wait_for_event(kube, namespace, "hourly", "RunCreated")
    assert metric_line(op, f'synpo_schedule_runs_created_total{{namespace="{namespace}",schedule="hourly"}}') \
        .endswith(" 1.0")
    time.sleep(1.5)  # one run per scheduled time, however many steps run
    assert list(runs(kube, namespace)) == [name]


def test_concurrency_policies(kube, namespace, start_operator, clock):
    start_operator()
    for policy in ("Allow", "Forbid", "Replace"):
        create_schedule(kube, namespace, schedule_doc(policy.lower(), pods=HOLD, concurrencyPolicy=policy))
    h1, h2 = clock.hour(1), clock.hour(2)
    clock.set(h1 + timedelta(seconds=10))
    for policy in ("allow", "forbid", "replace"):
        wait_until(f"{policy}'s first run", lambda p=policy: phase(runs(kube, namespace, p).get(run_name(p, h1), {}))
                   == "Running")

    clock.set(h2 + timedelta(seconds=10))
    # Allow: both run side by side
    wait_until("allow's second run", lambda: set(runs(kube, namespace, "allow"))
               == {run_name("allow", h1), run_name("allow", h2)})
    # Replace: the active run is deleted, the new one created
    wait_until("replace's run replaced", lambda: set(runs(kube, namespace, "replace")) == {run_name("replace", h2)})
    kube.wait_gone(f"{RUNS.format(ns=namespace)}/{run_name('replace', h1)}", timeout=30)
    # Forbid: skipped while the first is active
    st = wait_schedule(kube, namespace, "forbid",
                       lambda s: conditions(s).get("Ready", {}).get("reason") == "ConcurrencyForbid")["status"]
    assert run_name("forbid", h1) in conditions(st)["Ready"]["message"]
    assert set(runs(kube, namespace, "forbid")) == {run_name("forbid", h1)}
    assert st["active"] == [run_name("forbid", h1)]
    wait_for_event(kube, namespace, "replace", "RunReplaced")
    time.sleep(1.5)
    assert set(runs(kube, namespace, "forbid")) == {run_name("forbid", h1)}
    assert len(runs(kube, namespace, "allow")) == 2

    # Forbid: once the active run is gone, the still-due time gets its run (CronJob does the same)
    kube.delete(f"{RUNS.format(ns=namespace)}/{run_name('forbid', h1)}")
    wait_until("forbid's run after the active one left",
               lambda: set(runs(kube, namespace, "forbid")) == {run_name("forbid", h2)}, timeout=30)


def test_history_limits_prune_old_runs(kube, namespace, start_operator, clock):
    start_operator()
    create_schedule(kube, namespace, schedule_doc("pruned", pods=FAIL_FAST, concurrencyPolicy="Forbid",
                                                  failedRunsHistoryLimit=1))
    names = []
    for n in (1, 2, 3):
        clock.set(clock.hour(n) + timedelta(seconds=10))
        names.append(run_name("pruned", clock.hour(n)))
        wait_until(f"run {n} failed", lambda: phase(runs(kube, namespace).get(names[-1], {})) == "Failed", timeout=45)
        wait_until("only the newest failed run kept", lambda: set(runs(kube, namespace)) == {names[-1]}, timeout=30)
    st = get_schedule(kube, namespace, "pruned")["status"]
    assert st["active"] == [] and st["lastScheduleTime"] == f"{clock.hour(3):%Y-%m-%dT%H:%M:%SZ}"


def test_missed_window_after_an_outage(kube, namespace, start_operator, clock):
    op = start_operator()
    create_schedule(kube, namespace, schedule_doc("catchup", pods=HOLD))
    create_schedule(kube, namespace, schedule_doc("strict", pods=HOLD, startingDeadlineSeconds=60))
    h = clock.hour
    clock.set(h(1) + timedelta(seconds=5))
    wait_until("first runs", lambda: set(runs(kube, namespace)) == {run_name("catchup", h(1)), run_name("strict", h(1))})
    op.kill9()  # the outage

    audit = RunAudit(kube, namespace)
    clock.set(h(5) + timedelta(minutes=10))  # h2..h5 missed; h5 by 10 minutes, beyond strict's 60 s deadline
    op = start_operator()
    latest = run_name("catchup", h(5))
    wait_until("one run for the latest missed time", lambda: latest in runs(kube, namespace))
    wait_schedule(kube, namespace, "strict", lambda s: conditions(s).get("Ready", {}).get("reason") == "Waiting")
    time.sleep(2)
    assert audit.stop().names == {run_name("catchup", h(1)), run_name("strict", h(1)), latest}
    message = wait_for_event(kube, namespace, "catchup", "RunCreated", latest)["message"]
    assert "3 earlier missed time(s) skipped" in message, message
    assert metric_line(op, f'synpo_schedule_missed_total{{namespace="{namespace}",schedule="catchup"}}') \
        .endswith(" 3.0")
    # the next time within the deadline is taken again
    clock.set(h(6) + timedelta(seconds=30))
    wait_until("strict's next run", lambda: run_name("strict", h(6)) in runs(kube, namespace))


def evaluate_result(win_rate: float, n: int) -> dict:
    """The evaluate stage's result for M_1 winning `win_rate` of `n` comparisons with M0 (its Wilson interval and
    keys as the stage writes them), beside a large win over the references that the gate must ignore."""
    from synpo_operator.api.evaluation import flatten
    from synpo_workloads.winrate import wilson_interval

    def fig(p: float, k: int) -> dict:
        low, high = wilson_interval(p, k)
        return {"n": k, "winRate": p, "winRateLow": round(low, 4), "winRateHigh": round(high, 4)}

    return {"rows": n, "score": 0.25, **flatten({"references": fig(0.95, 400), "M0": fig(win_rate, n)}, "M0")}


def test_promotion_gate_promotes_then_refuses(kube, namespace, start_operator, clock):
    op = start_operator()
    better = {"evaluate": {"synpo.dev/fake-termination-message": json.dumps(evaluate_result(0.75, 200))}}
    create_schedule(kube, namespace, schedule_doc("continual", concurrencyPolicy="Forbid", pods=better,
                                                  promotion={"metric": "winRate", "minImprovement": 0.05}))
    path = f"{SCHEDULES.format(ns=namespace)}/continual"
    h = clock.hour
    first, second = run_name("continual", h(1)), run_name("continual", h(2))

    clock.set(h(1) + timedelta(seconds=5))  # 0.75 on 200 prompts: 95% interval [0.686, 0.805] > 0.55
    st = wait_schedule(kube, namespace, "continual", lambda s: s.get("promoted"), timeout=90)["status"]
    model = f"s3://bucket/runs/{namespace}/{first}/iter-1/train/model"
    assert st["promoted"]["model"] == model and st["promoted"]["run"] == first
    assert st["promoted"]["value"] == 0.75 and st["lastSuccessfulTime"]
    assert st["lastPromotionDecision"].startswith(f"promoted {first}: winRate vs M0 0.7500, 95% interval "
                                                  f"[0.6857, 0.8049], n = 200")
    assert st["lastPromotion"]["against"] == "org/tiny-sft" and st["lastPromotion"]["n"] == 200
    assert "n = 200" in wait_for_event(kube, namespace, "continual", "ModelPromoted")["message"]
    wait_until("run marked promoted", lambda: runs(kube, namespace)[first]["metadata"]["annotations"]
               .get("synpo.dev/promotion") == "promoted")
    assert metric_line(op, f'synpo_promotions_total{{decision="promoted",namespace="{namespace}",'
                           f'schedule="continual"}}').endswith(" 1.0")
    assert metric_line(op, f'synpo_promoted_score{{namespace="{namespace}",schedule="continual"}}') \
        .endswith(" 0.75")

    # the next run starts from the promoted model and wins 0.56 on 20 prompts: a point estimate above 0.55,
    # but its interval [0.351, 0.750] reaches far below: no evidence, not promoted
    weak = pod_annotations({"evaluate": {"synpo.dev/fake-termination-message": json.dumps(evaluate_result(0.56, 20))}})
    kube.patch(path, {"spec": {"runTemplate": {"metadata": {"annotations": weak}}}})
    clock.set(h(2) + timedelta(seconds=5))
    run2 = wait_until("the second run", lambda: runs(kube, namespace).get(second))
    assert run2["spec"]["model"]["base"] == model
    st = wait_schedule(kube, namespace, "continual", lambda s: (s.get("lastPromotion") or {}).get("run") == second,
                       timeout=90)["status"]
    assert st["lastPromotionDecision"] == (
        f"not promoted {second}: winRate vs M0 0.5600, 95% interval [0.3508, 0.7498], n = 20: the lower end "
        f"0.3508 does not exceed 0.550; rule: promote when the lower end of the 95% interval of winRate vs M0 > "
        f"0.5 + minImprovement = 0.550")
    assert st["lastPromotion"] == {"run": second, "promoted": False, "metric": "winRate", "against": model,
                                   "n": 20, "value": 0.56, "low": 0.3508, "high": 0.7498, "threshold": 0.55,
                                   "rule": "promote when the lower end of the 95% interval of winRate vs M0 > "
                                           "0.5 + minImprovement = 0.550"}
    assert st["promoted"]["run"] == first and st["promoted"]["model"] == model
    assert "n = 20" in wait_for_event(kube, namespace, "continual", "PromotionRefused")["message"]
    assert metric_line(op, f'synpo_promotions_total{{decision="refused",namespace="{namespace}",'
                           f'schedule="continual"}}').endswith(" 1.0")
    assert runs(kube, namespace)[second]["metadata"]["annotations"].get("synpo.dev/promotion") == "refused"
    # the base stays the promoted model
    clock.set(h(3) + timedelta(seconds=5))
    run3 = wait_until("the third run", lambda: runs(kube, namespace).get(run_name("continual", h(3))))
    assert run3["spec"]["model"]["base"] == model


def test_a_gate_without_its_opponent_is_refused_by_the_api_server(kube, crds, namespace):  # noqa: F811
    doc = schedule_doc("nobaseline", run={"evaluation": {"baseline": False}})
    with pytest.raises(ApiError) as err:
        create_schedule(kube, namespace, doc)
    assert err.value.status == 422
    assert "spec.runTemplate.spec.evaluation.baseline must be true" in str(err.value.body)
    doc["spec"]["promotion"] = {"enabled": False}  # no gate: nothing to compare
    create_schedule(kube, namespace, doc)


def test_concurrency_cap_holds_across_schedules_and_hand_made_runs(kube, namespace, start_operator, clock):
    op = start_operator("--max-active-runs-per-namespace", "1")
    audit = RunAudit(kube, namespace)
    for name in ("a", "b"):
        create_schedule(kube, namespace, schedule_doc(name))
    clock.set(clock.hour(1) + timedelta(seconds=5))
    # one schedule gets the slot; the other waits for it (ConcurrencyCap)
    first = wait_until("a first run", lambda: next(iter(runs(kube, namespace)), None))
    # ...and holds the slot (started) before the hand-made run arrives: otherwise that run may see it still
    # waiting ("0/1 active, 1 waiting run(s) ahead"; seen once under CI load)
    wait_until("the first run started", lambda: (runs(kube, namespace)[first].get("status") or {}).get("startTime"))
    # a run applied by hand meanwhile waits too, Pending with WaitingForCapacity
    manual = run_doc("manual", pods={**FAST, **FAIL_FAST})
    kube.post(RUNS.format(ns=namespace), manual)
    st = wait_until("manual run waiting", lambda: (runs(kube, namespace)["manual"].get("status") or {}) if
                    conditions(runs(kube, namespace)["manual"].get("status") or {}).get("Ready", {}).get("reason")
                    == "WaitingForCapacity" else None)
    assert st["phase"] == "Pending" and "startTime" not in st and not st.get("stages")
    assert "1/1 active in namespace" in conditions(st)["Ready"]["message"]
    wait_for_event(kube, namespace, "manual", "WaitingForCapacity")
    other = "b" if first.startswith("a-") else "a"
    wait_schedule(kube, namespace, other, lambda s: conditions(s).get("Ready", {}).get("reason") == "ConcurrencyCap")

    # everything gets its turn, one at a time
    wait_until("manual run finished", lambda: phase(runs(kube, namespace)["manual"]) == "Failed", timeout=90)
    wait_until("both schedules' runs succeeded", lambda: sorted(
        phase(r) or "" for n, r in runs(kube, namespace).items() if n != "manual") == ["Succeeded", "Succeeded"],
        timeout=120)
    audit.stop()
    assert audit.max_active == 1, audit.active_sets
    order = []
    for active in audit.active_sets:
        (name,) = active
        if not order or order[-1] != name:
            order.append(name)
    assert order[:2] == [first, "manual"], order  # oldest waiting run first
    assert len(order) == 3
    assert 'synpo_runs{phase="Succeeded"}' in op.metrics()


def test_invalid_cron_the_api_server_cannot_catch_is_reported(kube, namespace, start_operator, clock):
    start_operator()
    doc = schedule_doc("badcron")
    doc["spec"]["schedule"] = "0 25 * * *"  # five fields (the schema's pattern) but hour 25
    try:
        create_schedule(kube, namespace, doc)
    except ApiError as err:  # the schema caught it after all: fine as well
        assert "schedule" in str(err.body)
        return
    st = wait_schedule(kube, namespace, "badcron",
                       lambda s: conditions(s).get("Ready", {}).get("reason") == "InvalidSpec")["status"]
    assert "spec.schedule" in conditions(st)["Ready"]["message"]
    assert not runs(kube, namespace)



def test_the_weekly_example_is_accepted_by_the_api_server(kube, crds, namespace):  # noqa: F811
    import yaml

    from .test_operator import ROOT

    doc = yaml.safe_load((ROOT / "examples" / "schedule-weekly.yaml").read_text())
    doc["metadata"]["namespace"] = namespace
    kube.post(SCHEDULES.format(ns=namespace), doc, dryRun="All", fieldValidation="Strict")


def test_status_writes_are_guarded_and_converge_under_concurrent_writes(kube, namespace, start_operator, clock):
    """Schedule status writes carry the resourceVersion they were computed from: while another writer changes
    the schedule all the time, a conflicting write is never applied over the newer object; the step runs again
    from a fresh read. Scheduled times pass one after another until a write has conflicted; every one of them
    still got exactly one run, one RunCreated Event and its status."""
    op = start_operator()
    create_schedule(kube, namespace, schedule_doc("busy", pods=HOLD))
    wait_schedule(kube, namespace, "busy", lambda s: conditions(s).get("Ready", {}).get("reason") == "Waiting")
    stop = threading.Event()

    def churn() -> None:  # another writer: a new resourceVersion every few milliseconds
        n = 0
        while not stop.is_set():
            n += 1
            try:
                kube.patch(f"{SCHEDULES.format(ns=namespace)}/busy", {"metadata": {"annotations": {
                    "example.com/touched": str(n)}}})
            except ApiError:
                pass
            time.sleep(0.005)

    writer = threading.Thread(target=churn, daemon=True)
    writer.start()
    names: list[str] = []
    try:
        for hour in range(1, 9):
            at = clock.hour(hour)
            clock.set(at + timedelta(seconds=10))
            names.append(run_name("busy", at))
            due, want = f"{at:%Y-%m-%dT%H:%M:%SZ}", sorted(names)
            wait_schedule(kube, namespace, "busy", lambda s, due=due, want=want: s.get("lastScheduleTime") == due
                          and sorted(s.get("active") or []) == want, timeout=60)
            if "busy: schedule status write conflicted" in op.logs():
                break
        else:
            raise AssertionError("no status write conflicted in 8 scheduled times")
    finally:
        stop.set()
        writer.join(5)
    assert sorted(runs(kube, namespace)) == sorted(names)
    time.sleep(1.5)
    created = [e for e in events(kube, namespace, "busy") if e["reason"] == "RunCreated"]
    assert sum(e.get("count") or 1 for e in created) == len(names), (created, names)
