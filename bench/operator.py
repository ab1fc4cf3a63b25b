"""Operator benchmark on the local control plane (`synpo dev-cluster`): N SynPORuns applied at once.

    .venv/bin/python bench/operator.py                      # 1000 runs
    .venv/bin/python bench/operator.py --runs 200 --baseline --json out.json
    .venv/bin/python bench/operator.py --runs 200 --aa      # A/A: the same controller twice (order bias check)
    .venv/bin/python bench/operator.py --replicas 2         # two operator replicas (leader + standby)

No order bias: the contenders are measured in alternating order over `--rounds` rounds (default 2: A B, then
B A; `--order random` shuffles each round), each figure is the median over the rounds, and
`--fresh-apiserver` restarts kube-apiserver before every measurement (a cold watch cache and APF state for
each; use a dev cluster of your own, `SYNPO_DEVCLUSTER_STATE`). `--aa` measures today's controller against
itself: every ratio should be within 1.1x.

What it does, per configuration (the operator under test, then with --baseline the naive one):

1. a fresh namespace; a ServiceAccount for the operator (cluster-admin) with its own APF FlowSchema, so
   the API server counts the operator's requests apart from everything else
   (`apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}`);
2. `synpo operator --namespace <ns>` as a subprocess with that identity; its RSS (and its children's) is
   sampled every 0.2 s;
3. a watch on the namespace's Jobs records when each Job is first seen and when it is first seen finished
   (SuccessCriteriaMet/Complete, FailureTarget/Failed: what the operator acts on), and a watch on the runs
   when each is first seen with a status;
4. N runs (1 iteration, 1 shard) are POSTed at once from a thread pool. `--flowing K` of them run to the
   end: their pods finish after `--pod-duration` (kwok). The others carry `queueName`, so their Jobs are
   created suspended (as Kueue expects) and wait for an admission that never comes: they stay active runs,
   with status, but make no pods (the fake node holds 110 pods);
5. waits until every run has its first Job and a status and every flowing run has Succeeded; then deletes the namespace
   (garbage collection takes the Jobs), waits for it to go, and stops the operator.

With `--replicas 2` two operator processes run, with leader election (the Lease in the namespace); the second
starts once the first leads. Figures are the leader's; `standby_peak_rss_mb` is the standby's.

Metrics: apply (client send time) → first Job of the run seen (p50, p99); apply → the run's first status
seen (p50, p99: during a burst the operator writes it after the new runs' first Jobs); a Job seen finished → the next Job
of the same run seen (p50, p99, over every Job that was created after a completion of its run); operator
peak RSS and CPU seconds; the operator's API requests divided by stage transitions seen (Jobs created + Jobs completed).

Needs the dev cluster binaries (`synpo dev-cluster build`); uses `$SYNPO_DEVCLUSTER_STATE` like every other
dev-cluster command (set it to run on an instance of your own).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from synpo_devcluster.client import ApiError, KubeClient  # noqa: E402

RUNS = "/apis/synpo.dev/v1alpha1/namespaces/{ns}/synporuns"
JOBS = "/apis/batch/v1/namespaces/{ns}/jobs"
FLOWSCHEMAS = "/apis/flowcontrol.apiserver.k8s.io/v1/flowschemas"
CRBS = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
OPERATOR_SA = "synpo-bench-operator"

TARGETS = {"first_job_p99_s": 2.0, "peak_rss_mb": 300.0}
TERMINAL = ("Complete", "SuccessCriteriaMet", "Failed", "FailureTarget")


# ---- helpers ---------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_doc(name: str, flowing: bool, pod_duration: str, gpus: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"base": "org/tiny-sft"},
        "data": {"seed": "s3://data/seed.jsonl", "corpus": "s3://data/corpus.jsonl",
                 "eval": "s3://data/eval.jsonl"},
        "iterations": 1,
        "promptsPerIteration": 10,
        "pairsPerIteration": 5,
        "generation": {"shards": 1, "engine": "transformers"},
        "storage": {"uri": "s3://bucket/runs"},
        "resources": {"image": "synpo-workloads:bench", "gpusPerPod": gpus, "cpu": "100m", "memory": "64Mi"},
    }
    if not flowing:
        spec["queueName"] = "held"  # Jobs created suspended; nothing admits them
    pods = {"*": {"synpo.dev/fake-duration": pod_duration}}
    return {
        "apiVersion": "synpo.dev/v1alpha1",
        "kind": "SynPORun",
        "metadata": {"name": name, "labels": {"synpo.dev/bench": "flowing" if flowing else "held"},
                     "annotations": {"synpo.dev/test-pod-annotations": json.dumps(pods)}},
        "spec": spec,
    }


# ---- observers ---------------------------------------------------------------------------------------------

@dataclass
class JobSeen:
    run: str
    name: str
    added: float
    done: float | None = None


class Watcher:
    """Streams one collection (a list path, a label selector) and hands each ADDED/MODIFIED object to `seen`
    with the monotonic time it arrived."""

    def __init__(self, kube: KubeClient, path: str, selector: str):
        self.kube, self.path, self.selector = kube, path, selector
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors = 0

    def start(self) -> None:
        threading.Thread(target=self._loop, daemon=True, name=f"watch {self.path}").start()

    def seen(self, obj: dict[str, Any], now: float) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        rv = ""
        while not self.stop.is_set():
            q = {"watch": "1", "labelSelector": self.selector, "allowWatchBookmarks": "true",
                 "timeoutSeconds": "600"}
            if rv:
                q["resourceVersion"] = rv
            url = self.kube.server + self.path + "?" + urllib.parse.urlencode(q)
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.kube.token}"})
            try:
                with urllib.request.urlopen(req, context=self.kube._ctx, timeout=700) as resp:
                    for line in resp:
                        if self.stop.is_set():
                            return
                        now = time.monotonic()
                        ev = json.loads(line)
                        obj = ev.get("object") or {}
                        rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                        if ev.get("type") == "ERROR":
                            rv = ""
                            break
                        if ev.get("type") in ("ADDED", "MODIFIED"):
                            with self.lock:
                                self.seen(obj, now)
            except Exception:  # noqa: BLE001 - reconnect
                self.errors += 1
                time.sleep(0.2)


class JobWatcher(Watcher):
    """The namespace's Jobs (labelled synpo.dev/run): when each is first seen, and first seen finished."""

    def __init__(self, kube: KubeClient, ns: str):
        super().__init__(kube, JOBS.format(ns=ns), "synpo.dev/run")
        self.jobs: dict[str, JobSeen] = {}

    def seen(self, job: dict[str, Any], now: float) -> None:
        meta = job["metadata"]
        rec = self.jobs.get(meta["name"])
        if rec is None:
            rec = self.jobs[meta["name"]] = JobSeen(meta["labels"].get("synpo.dev/run", "?"), meta["name"], now)
        if rec.done is None:
            # the first terminal condition: the Job controller sets SuccessCriteriaMet/FailureTarget
            # before Complete/Failed (it waits for the pods to terminate), and the operator acts on it
            for cond in (job.get("status") or {}).get("conditions") or []:
                if cond.get("type") in TERMINAL and cond.get("status") == "True":
                    rec.done = now

    def snapshot(self) -> list[JobSeen]:
        with self.lock:
            return [JobSeen(j.run, j.name, j.added, j.done) for j in self.jobs.values()]


class StatusWatcher(Watcher):
    """The namespace's runs: when each is first seen with a status (its first status write)."""

    def __init__(self, kube: KubeClient, ns: str):
        super().__init__(kube, RUNS.format(ns=ns), "synpo.dev/bench")
        self.first_status: dict[str, float] = {}

    def seen(self, run: dict[str, Any], now: float) -> None:
        if (run.get("status") or {}).get("phase"):
            self.first_status.setdefault(run["metadata"]["name"], now)

    def snapshot(self) -> dict[str, float]:
        with self.lock:
            return dict(self.first_status)


class RssSampler:
    """Peak RSS of a process and its descendants (sum), sampled every `period` seconds."""

    def __init__(self, pid: int, period: float = 0.2):
        import psutil

        self.proc = psutil.Process(pid)
        self.period = period
        self.peak = 0
        self.hwm = 0
        self.cpu_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rss")

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period)

    def sample(self) -> None:
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except Exception:  # noqa: BLE001 - a child that just exited
                    pass
            self.peak = max(self.peak, total)
            times = self.proc.cpu_times()
            self.cpu_seconds = max(self.cpu_seconds, times.user + times.system)
            with open(f"/proc/{self.proc.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        self.hwm = max(self.hwm, int(line.split()[1]) * 1024)
        except Exception:  # noqa: BLE001 - process gone
            pass

    def stop(self) -> None:
        self.sample()
        self._stop.set()


def operator_counter(port: int, name: str) -> float:
    """A counter of the operator's own /metrics (summed over labels); 0 when unreadable."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith(name + "_created"))


def apf_count(kube: KubeClient, flow_schema: str) -> int:
    text = kube.get_text("/metrics")
    total = 0
    needle = f'flow_schema="{flow_schema}"'
    for line in text.splitlines():
        if line.startswith("apiserver_flowcontrol_dispatched_requests_total{") and needle in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


# ---- one configuration -----------------------------------------------------------------------------------

def install_crds(kube: KubeClient) -> None:
    import yaml

    for path in sorted((ROOT / "crds").glob("*.yaml")):
        kube.apply_crd(yaml.safe_load(path.read_text()))


class Bench:
    def __init__(self, kube: KubeClient, kubeconfig_template: dict[str, Any], args: argparse.Namespace,
                 label: str, operator_args: list[str], operator_env: dict[str, str] | None = None,
                 command: list[str] | None = None):
        self.kube = kube
        self.cfg = kubeconfig_template
        self.args = args
        self.label = label
        self.operator_args = operator_args
        self.operator_env = operator_env or {}
        self.command = command or [sys.executable, "-m", "synpo_operator.cli", "operator"]
        """The controller process; it gets `--namespace NS --metrics-port P --health-port 0` and the args."""
        self.ns = f"bench-op-{uuid.uuid4().hex[:6]}"
        self.fs_name = f"synpo-bench-{self.ns}"
        self.proc: subprocess.Popen | None = None
        """The leader (the only process with one replica)."""
        self.procs: list[subprocess.Popen] = []
        self.ports: list[int] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="synpo-bench-op-"))

    # -- setup / teardown
    def setup(self) -> None:
        kube, ns = self.kube, self.ns
        kube.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": ns, "labels": {"synpo.dev/bench": "true"}}})
        kube.wait_for(f"/api/v1/namespaces/{ns}/serviceaccounts/default", lambda _: True, timeout=30)
        kube.post(f"/api/v1/namespaces/{ns}/serviceaccounts",
                  {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": OPERATOR_SA}})
        kube.post(CRBS, {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": self.fs_name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": ns}]})
        kube.post(FLOWSCHEMAS, {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
            "metadata": {"name": self.fs_name},
            "spec": {
                "matchingPrecedence": 500,
                "priorityLevelConfiguration": {"name": "exempt"},
                "rules": [{
                    "subjects": [{"kind": "ServiceAccount",
                                  "serviceAccount": {"name": OPERATOR_SA, "namespace": ns}}],
                    "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                       "clusterScope": True, "namespaces": ["*"]}],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }],
            }})
        kube.wait_for(f"{FLOWSCHEMAS}/{self.fs_name}", lambda o: any(
            c.get("type") == "Dangling" and c.get("status") == "False"
            for c in (o.get("status") or {}).get("conditions") or []), timeout=30)
        token = kube.request_token(ns, OPERATOR_SA, expiration_seconds=6 * 3600)
        cfg = json.loads(json.dumps(self.cfg))
        for user in cfg["users"]:
            user["user"] = {"token": token}
        self.kubeconfig = self.tmp / "operator.kubeconfig"
        self.kubeconfig.write_text(json.dumps(cfg))

    def start_operator(self) -> None:
        """Start `--replicas` operator processes, one after another (the first leads), and wait for the leader."""
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1", **self.operator_env}
        replicas = max(1, self.args.replicas)
        for i in range(replicas):
            port = _free_port()
            log_path = self.tmp / f"operator-{i}.log"
            extra = ["--identity", f"{self.label}-{i}"] if replicas > 1 else []
            proc = subprocess.Popen(
                [*self.command, "--namespace", self.ns,
                 "--metrics-port", str(port), "--health-port", "0", *extra, *self.operator_args],
                stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT,  # noqa: SIM115
                start_new_session=True)
            self.procs.append(proc)
            self.ports.append(port)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"operator exited: {log_path.read_text()[-3000:]}")
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.2)
            else:
                raise RuntimeError("operator did not come up")
            if i == 0 and replicas > 1:
                self.kube.wait_for(f"/apis/coordination.k8s.io/v1/namespaces/{self.ns}/leases/synpo-operator",
                                   lambda o: (o.get("spec") or {}).get("holderIdentity"), timeout=60)
        self.proc, self.port, self.log_path = self.procs[0], self.ports[0], self.tmp / "operator-0.log"
        if replicas > 1:
            holder = self.kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{self.ns}/leases/synpo-operator")
            assert holder["spec"]["holderIdentity"] == f"{self.label}-0", holder["spec"]
        self._settle()

    def _settle(self, quiet: float = 2.0, limit: float = 60.0) -> None:
        """Wait until the operator's start-up requests (discovery, initial LISTs, watches) are over: its
        request count stays the same for `quiet` seconds (at most `limit`), so they are not counted."""
        deadline = time.monotonic() + limit
        last, since = apf_count(self.kube, self.fs_name), time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - since < quiet:
            time.sleep(0.5)
            now = apf_count(self.kube, self.fs_name)
            if now != last:
                last, since = now, time.monotonic()

    def stop_operator(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()

    def cleanup(self) -> None:
        """Stop the operator, release the runs' finalizers, delete the namespace and wait for it to go."""
        kube, ns = self.kube, self.ns
        t0 = time.monotonic()
        try:
            self.stop_operator()
            runs = kube.get(RUNS.format(ns=ns)).get("items", []) if kube.exists(f"/api/v1/namespaces/{ns}") else []

            def release(run: dict[str, Any]) -> None:
                if run["metadata"].get("finalizers"):
                    try:
                        kube.patch(f"{RUNS.format(ns=ns)}/{run['metadata']['name']}",
                                   {"metadata": {"finalizers": None}})
                    except (ApiError, OSError):
                        pass

            with ThreadPoolExecutor(self.args.clients) as pool:
                list(pool.map(release, runs))
            kube.delete_if_exists(f"/api/v1/namespaces/{ns}", propagationPolicy="Background")
            kube.wait_gone(f"/api/v1/namespaces/{ns}", timeout=self.args.cleanup_timeout, interval=1)
        finally:
            self.stop_operator()
            kube.delete_if_exists(f"{FLOWSCHEMAS}/{self.fs_name}")
            kube.delete_if_exists(f"{CRBS}/{self.fs_name}")
        log(f"{self.label}: operator stopped, namespace {ns} deleted in {time.monotonic() - t0:.0f}s")

    # -- the measurement
    def measure(self) -> dict[str, Any]:
        args, kube, ns = self.args, self.kube, self.ns
        n, flowing = args.runs, min(args.flowing, args.runs)
        names = [f"r{i:05d}" for i in range(n)]
        flowing_names = set(names[:: max(1, n // flowing)][:flowing]) if flowing else set()

        watcher, statuses = JobWatcher(kube, ns), StatusWatcher(kube, ns)
        watcher.start()
        statuses.start()
        rss = RssSampler(self.proc.pid)
        rss.start()
        standby_rss = [RssSampler(p.pid) for p in self.procs[1:]]
        for sampler in standby_rss:
            sampler.start()
        time.sleep(0.5)
        before = apf_count(kube, self.fs_name)
        rec_before = operator_counter(self.port, "synpo_reconciles_total")
        cpu_before = rss.cpu_seconds
        sent: dict[str, float] = {}

        def post(name: str) -> None:
            doc = run_doc(name, name in flowing_names, args.pod_duration, args.gpus_per_pod)
            sent[name] = time.monotonic()
            for attempt in range(5):
                try:
                    kube.post(RUNS.format(ns=ns), doc)
                    return
                except ApiError as err:
                    if err.status == 409:
                        return
                    if attempt == 4:
                        raise
                except OSError:
                    if attempt == 4:
                        raise
                time.sleep(0.5)

        t0 = time.monotonic()
        log(f"{self.label}: applying {n} runs ({len(flowing_names)} flowing) in {ns}")
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(post, names))
        apply_s = time.monotonic() - t0
        log(f"{self.label}: applied in {apply_s:.1f}s")

        deadline = t0 + args.timeout
        done_flowing: set[str] = set()
        while time.monotonic() < deadline:
            jobs = watcher.snapshot()
            with_job = {j.run for j in jobs}
            with_status = len(statuses.snapshot())
            if len(with_job) >= n and with_status >= n and len(done_flowing) >= len(flowing_names):
                break
            if flowing_names and len(done_flowing) < len(flowing_names):
                items = kube.get(RUNS.format(ns=ns), labelSelector="synpo.dev/bench=flowing").get("items", [])
                done_flowing = {r["metadata"]["name"] for r in items
                                if (r.get("status") or {}).get("phase") in ("Succeeded", "Failed")}
            log(f"{self.label}: runs with a Job {len(with_job)}/{n}, with a status {with_status}/{n}, flowing done "
                f"{len(done_flowing)}/{len(flowing_names)}, Jobs {len(jobs)}, "
                f"completed {sum(1 for j in jobs if j.done)}, rss {rss.peak / 2**20:.0f} MB")
            time.sleep(3)
        elapsed = time.monotonic() - t0
        timed_out = time.monotonic() >= deadline
        after = apf_count(kube, self.fs_name)
        reconciles = operator_counter(self.port, "synpo_reconciles_total") - rec_before
        rss.stop()
        for sampler in standby_rss:
            sampler.stop()
        watcher.stop.set()
        statuses.stop.set()
        jobs = watcher.snapshot()
        first_status = statuses.snapshot()

        failed = [r["metadata"]["name"] for r in kube.get(RUNS.format(ns=ns)).get("items", [])
                  if (r.get("status") or {}).get("phase") == "Failed"]

        # apply -> first Job
        first: dict[str, float] = {}
        for j in jobs:
            first[j.run] = min(first.get(j.run, j.added), j.added)
        first_lat = [first[r] - sent[r] for r in names if r in first and r in sent]
        status_lat = [first_status[r] - sent[r] for r in names if r in first_status and r in sent]
        # Job completion -> next Job of the run
        by_run: dict[str, list[JobSeen]] = {}
        for j in jobs:
            by_run.setdefault(j.run, []).append(j)
        next_lat = []
        for run_jobs in by_run.values():
            dones = sorted(j.done for j in run_jobs if j.done is not None)
            for j in run_jobs:
                prior = [d for d in dones if d <= j.added]
                if prior:
                    next_lat.append(j.added - prior[-1])
        created = len(jobs)
        completed = sum(1 for j in jobs if j.done is not None)
        requests = after - before
        transitions = created + completed
        return {
            "label": self.label,
            "operator_args": self.operator_args,
            "operator_env": self.operator_env,
            "runs": n,
            "flowing_runs": len(flowing_names),
            "runs_with_job": len(first),
            "flowing_done": len(done_flowing),
            "failed_runs": len(failed),
            "timed_out": timed_out,
            "apply_seconds": round(apply_s, 2),
            "elapsed_seconds": round(elapsed, 1),
            "first_job_p50_s": percentile(first_lat, 0.5),
            "first_job_p99_s": percentile(first_lat, 0.99),
            "first_job_max_s": max(first_lat) if first_lat else None,
            "first_status_p50_s": percentile(status_lat, 0.5),
            "first_status_p99_s": percentile(status_lat, 0.99),
            "next_job_p50_s": percentile(next_lat, 0.5),
            "next_job_p99_s": percentile(next_lat, 0.99),
            "next_job_samples": len(next_lat),
            "peak_rss_mb": round(max(rss.peak, rss.hwm) / 2**20, 1),
            "replicas": len(self.procs),
            "standby_peak_rss_mb": round(max(max(r.peak, r.hwm) for r in standby_rss) / 2**20, 1)
            if standby_rss else None,
            "operator_cpu_s": round(rss.cpu_seconds - cpu_before, 1),
            "api_requests": requests,
            "jobs_created": created,
            "jobs_completed": completed,
            "stage_transitions": transitions,
            "requests_per_transition": round(requests / transitions, 2) if transitions else None,
            "requests_per_run": round(requests / n, 2) if n else None,
            "reconciles": int(reconciles),
            "reconciles_per_transition": round(reconciles / transitions, 2) if transitions else None,
            "watch_errors": watcher.errors + statuses.errors,
        }

    def run(self) -> dict[str, Any]:
        self.setup()
        try:
            self.start_operator()
            return self.measure()
        finally:
            self.cleanup()


# ---- report ------------------------------------------------------------------------------------------

ROWS = [
    ("runs applied", "runs", None, ""),
    ("apply -> first Job p50 (s)", "first_job_p50_s", None, "lower"),
    ("apply -> first Job p99 (s)", "first_job_p99_s", "first_job_p99_s", "lower"),
    ("apply -> first status p50 (s)", "first_status_p50_s", None, "lower"),
    ("apply -> first status p99 (s)", "first_status_p99_s", None, "lower"),
    ("Job finished -> next Job p50 (s)", "next_job_p50_s", None, "lower"),
    ("Job finished -> next Job p99 (s)", "next_job_p99_s", None, "lower"),
    ("operator peak RSS (MB)", "peak_rss_mb", "peak_rss_mb", "lower"),
    ("operator CPU (s)", "operator_cpu_s", None, "lower"),
    ("API requests per stage transition", "requests_per_transition", None, "lower"),
    ("API requests per run", "requests_per_run", None, "lower"),
    ("reconciles per stage transition", "reconciles_per_transition", None, "lower"),
    ("stage transitions seen", "stage_transitions", None, ""),
    ("wall time to done (s)", "elapsed_seconds", None, "lower"),
]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def table(result: dict[str, Any], baseline: dict[str, Any] | None,
          names: tuple[str, str] = ("value", "baseline")) -> str:
    lines = [f"| metric | {names[0]} | {names[1]} | ratio | target | pass |", "|---|---|---|---|---|---|"]
    for title, key, target_key, _ in ROWS:
        v = result.get(key)
        b = baseline.get(key) if baseline else None
        ratio = f"{v / b:.2f}x" if isinstance(v, (int, float)) and isinstance(b, (int, float)) and b else "-"
        target = TARGETS.get(target_key) if target_key else None
        ok = "-" if target is None or v is None else ("yes" if v <= target else "NO")
        lines.append(f"| {title} | {_fmt(v)} | {_fmt(b)} | {ratio} | "
                     f"{'<= ' + _fmt(target) if target is not None else '-'} | {ok} |")
    return "\n".join(lines)


KOPF_RULE = 1.5
"""Issue 16: runs go back to Kopf when lean Kopf is within this factor of today's controller on every one of
DECISION_KEYS."""
DECISION_KEYS = ("first_job_p99_s", "next_job_p99_s", "peak_rss_mb", "requests_per_transition")


def kopf_decision(today: dict[str, Any], kopf: dict[str, Any]) -> tuple[bool, list[str]]:
    """(Kopf wins, one line per metric: kopf / today and whether it is within KOPF_RULE). A metric either
    side could not measure counts against Kopf (the rule needs all four)."""
    lines, ok = [], True
    for key in DECISION_KEYS:
        t, k = today.get(key), kopf.get(key)
        if isinstance(t, (int, float)) and isinstance(k, (int, float)) and t > 0:
            ratio = k / t
            within = ratio <= KOPF_RULE
            lines.append(f"{key}: kopf-lean {_fmt(k)} / today {_fmt(t)} = {ratio:.2f}x "
                         f"({'within' if within else 'NOT within'} {KOPF_RULE}x)")
        else:
            within = False
            lines.append(f"{key}: kopf-lean {_fmt(k)} / today {_fmt(t)}: not comparable")
        ok = ok and within
    if today.get("timed_out") or kopf.get("timed_out"):
        lines.append("a controller timed out: " + ", ".join(
            n for n, r in (("today", today), ("kopf-lean", kopf)) if r.get("timed_out")))
        ok = ok and not kopf.get("timed_out")
    return ok, lines


def _worktree(ref: str) -> Path:
    """A detached checkout of `ref` (removed at exit): the baseline operator's code."""
    import atexit

    path = Path(tempfile.mkdtemp(prefix="synpo-bench-ref-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref], check=True,
                   capture_output=True)
    atexit.register(subprocess.run, ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
                    capture_output=True)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1000, help="SynPORuns applied at once (default 1000)")
    p.add_argument("--flowing", type=int, default=20,
                   help="how many of them run to the end; the others wait in a queue (default 20)")
    p.add_argument("--pod-duration", default="300ms", help="how long a stage pod runs in kwok (default 300ms)")
    p.add_argument("--gpus-per-pod", type=int, default=0,
                   help="spec.resources.gpusPerPod (default 0: the fake node has only 8 GPUs)")
    p.add_argument("--clients", type=int, default=16, help="threads that POST the runs (default 16)")
    p.add_argument("--timeout", type=float, default=900, help="give up waiting after this many seconds")
    p.add_argument("--cleanup-timeout", type=float, default=300)
    p.add_argument("--operator-args", default="", help="extra `synpo operator` flags for the measured run")
    p.add_argument("--operator-env", default="", help="extra environment of the measured operator, NAME=VALUE[,...]")
    p.add_argument("--baseline", action="store_true",
                   help="also measure the naive configuration on the same workload: by default the "
                        "operator without its watch caches (SYNPO_OPERATOR_CACHE=0: every reconcile GETs the "
                        "run and LISTs the run's Jobs and pods, the plain controller loop)")
    p.add_argument("--baseline-args", default="", help="`synpo operator` flags of the baseline")
    p.add_argument("--baseline-env", default="SYNPO_OPERATOR_CACHE=0",
                   help="environment of the baseline operator, NAME=VALUE[,NAME=VALUE] (default: caches off)")
    p.add_argument("--baseline-ref", metavar="GIT_REF",
                   help="the baseline is the operator as committed at GIT_REF (checked out into a temporary "
                        "git worktree, first on its PYTHONPATH), e.g. the commit before a change; "
                        "--baseline-env then defaults to nothing")
    p.add_argument("--baseline-command", metavar="CMD",
                   help="the baseline is this command instead of `synpo operator` (split like a shell "
                        "would; it gets --namespace NS --metrics-port P --health-port 0 and --baseline-args)")
    p.add_argument("--baseline-kopf-lean", action="store_true",
                   help="the baseline is the lean Kopf run controller (bench/kopf_lean.py); prints the Kopf "
                        "decision of issue 16 (lean Kopf within 1.5x of today's controller on first-Job p99, "
                        "next-Job p99, peak RSS and API requests per transition)")
    p.add_argument("--aa", action="store_true",
                   help="A/A: the baseline is today's controller again, with the operator's args and env (every "
                        "ratio should be within 1.1x; shows the bench has no order bias)")
    p.add_argument("--replicas", type=int, default=1,
                   help="operator processes per measurement, with leader election (default 1; 2: leader + standby)")
    p.add_argument("--rounds", type=int, default=2,
                   help="measure each contender this often, in alternating order (default 2: A B, then B A); "
                        "figures are medians over the rounds")
    p.add_argument("--order", choices=("alternate", "random"), default="alternate",
                   help="the contenders' order in each round: alternate (default) or random (--seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of --order random")
    p.add_argument("--fresh-apiserver", action="store_true",
                   help="restart kube-apiserver before every measurement (use a dev cluster of your own)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = p.parse_args(argv)

    from synpo_devcluster import cluster

    info = cluster.ensure_up()
    kube = info.client(timeout=60)
    import yaml

    cfg_template = yaml.safe_load(Path(info.kubeconfig).read_text())
    install_crds(kube)

    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                           "kubernetes": info.k8s_version, "loadavg_start": os.getloadavg()},
                               "args": vars(args)}
    contenders = _contenders(args, p)
    names = tuple(c.name for c in contenders) if len(contenders) == 2 else ("operator", "baseline")
    measured: dict[str, list[dict[str, Any]]] = {c.name: [] for c in contenders}
    results["rounds"] = []
    for rnd, order in enumerate(schedule([c.name for c in contenders], args.rounds, args.order, args.seed)):
        for name in order:
            c = next(c for c in contenders if c.name == name)
            if args.fresh_apiserver:
                _restart_apiserver(info, kube)
            res = Bench(kube, cfg_template, args, c.name, c.args, c.env, c.command).run()
            res["round"], res["position"] = rnd, order.index(name)
            measured[name].append(res)
            results["rounds"].append(res)
            log(f"{name} (round {rnd + 1}, position {res['position'] + 1}): {json.dumps(res)}")
    results["machine"]["loadavg_end"] = os.getloadavg()
    res = median_result(measured[contenders[0].name])
    base = median_result(measured[contenders[1].name]) if len(contenders) > 1 else None
    results["result"] = res
    if base is not None:
        results["baseline"] = base
    text = table(res, base, names)
    text += (f"\n\n{args.rounds} round(s), order {args.order}"
             f"{', fresh kube-apiserver each' if args.fresh_apiserver else ''}; medians over rounds; load average "
             f"(1/5/15 min) {_load(results['machine']['loadavg_start'])} at start, "
             f"{_load(results['machine']['loadavg_end'])} at end")
    if args.aa and base is not None:
        ratios = aa_ratios(res, base)
        worst = max(ratios.values(), default=0.0)
        results["aa_ratios"], results["aa_worst_ratio"] = ratios, worst
        text += ("\nA/A (no order bias: each <= 1.1x): "
                 + ", ".join(f"{key} {ratio:.2f}x" for key, ratio in ratios.items()) + f"; worst {worst:.2f}x")
    if args.baseline_kopf_lean and base is not None:
        kopf_wins, lines = kopf_decision(res, base)
        results["kopf_decision"] = {"kopf": kopf_wins, "rule": KOPF_RULE, "lines": lines}
        text += f"\n\nKopf decision (lean Kopf / today's controller, rule: every ratio <= {KOPF_RULE}x):\n"
        text += "\n".join(f"- {line}" for line in lines)
        text += "\n=> " + ("runs go back to Kopf" if kopf_wins else "keep the hand-written controller")
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    ok = (res["first_job_p99_s"] is not None and res["first_job_p99_s"] <= TARGETS["first_job_p99_s"]
          and res["peak_rss_mb"] <= TARGETS["peak_rss_mb"] and not res["timed_out"])
    return 0 if ok else 1


@dataclass
class Contender:
    name: str
    args: list[str]
    env: dict[str, str]
    command: list[str] | None = None


def _contenders(args: argparse.Namespace, p: argparse.ArgumentParser) -> list[Contender]:
    """Today's controller first; then the baseline, if any (named in the table's second column)."""
    env = dict(kv.split("=", 1) for kv in args.operator_env.split(",") if kv)
    today = Contender("operator", args.operator_args.split(), env)
    if args.aa:
        return [Contender("operator-A", today.args, today.env), Contender("operator-B", today.args, today.env)]
    command, name = None, "baseline"
    if args.baseline_kopf_lean:
        command, name = [sys.executable, str(ROOT / "bench" / "kopf_lean.py")], "kopf-lean"
    elif args.baseline_command:
        command = shlex.split(args.baseline_command)
    if not (args.baseline or args.baseline_ref or command):
        return [today]
    base_env = dict(kv.split("=", 1) for kv in args.baseline_env.split(",") if kv)
    if args.baseline_ref or command:
        base_env = {} if args.baseline_env == p.get_default("baseline_env") else base_env
    if args.baseline_ref:
        base_env["PYTHONPATH"] = str(_worktree(args.baseline_ref) / "operator")
    return [today, Contender(name, args.baseline_args.split(), base_env, command)]


def schedule(names: list[str], rounds: int, order: str = "alternate", seed: int = 0) -> list[list[str]]:
    """The contenders' order in each round: alternate (A B, B A, A B, ...) or shuffled with `seed`. Whatever a
    measurement inherits from the one before it (a warmer API server, etcd grown by the namespace just deleted,
    its garbage collection still running) then falls on each contender equally often."""
    import random

    rng = random.Random(seed)
    out = []
    for rnd in range(max(1, rounds)):
        this = list(names)
        if order == "random":
            rng.shuffle(this)
        elif rnd % 2:
            this.reverse()
        out.append(this)
    return out


def median_result(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several rounds of a contender: the median of every number; a round that timed out
    makes the whole timed out."""
    import statistics

    out = dict(rounds[0])
    for key, value in rounds[0].items():
        values = [r.get(key) for r in rounds]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and all(
                isinstance(v, (int, float)) for v in values):
            out[key] = statistics.median(values)
    out["timed_out"] = any(r.get("timed_out") for r in rounds)
    out["rounds"] = len(rounds)
    return out


AA_KEYS = ("first_job_p50_s", "first_job_p99_s", "next_job_p99_s", "requests_per_transition")


def aa_ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """B / A per key, as the deviation from 1 in the worse direction (1.25 and 0.8 both give 1.25)."""
    out = {}
    for key in AA_KEYS:
        x, y = a.get(key), b.get(key)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and x > 0 and y > 0:
            out[key] = max(y / x, x / y)
    return out


def _load(values: Any) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def _restart_apiserver(info: Any, kube: KubeClient) -> None:
    """Kill kube-apiserver and start it again with the same command line (etcd keeps the data)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from reliability.chaos import restart_component, wait_api_ready

    restart_component(info.state_dir, "kube-apiserver", down_seconds=0.5)
    waited = wait_api_ready(kube)
    log(f"kube-apiserver restarted, ready after {waited:.1f}s")


if __name__ == "__main__":
    sys.exit(main())
