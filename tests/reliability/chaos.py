"""Fault-injection helpers for the reliability tests (used by tests/integration/test_reliability_*.py).

- `restart_component`: kill one dev-cluster component (SIGKILL of its process group) and start it again with
  the very same command line, working directory and log file; the new pid is written back to the dev
  cluster's state (state.json, pids.json) so `synpo dev-cluster down` still stops it. The dev cluster itself
  has no single-component restart; this lives in the tests on purpose.
- `RssSampler`: peak resident memory of a process, sampled from /proc.
- `PodScript`: a thread that plays "kubelet chaos" on held kwok pods (release each with an exit code chosen
  per pod), used to fail exactly one pod per stage.
- `JobLedger`: every (Job name, uid) ever seen in a namespace (a Job created twice has two uids).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synpo_devcluster.client import ApiError, KubeClient

# ---- dev-cluster components ------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state in ("Z", "X"):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def component_pid(state_dir: str | Path, name: str) -> int:
    state = json.loads((Path(state_dir) / "state.json").read_text())
    return int(state["pids"][name])


def kill_component(state_dir: str | Path, name: str) -> tuple[list[str], str]:
    """SIGKILL a component's process group; returns (argv, cwd) to start it again."""
    pid = component_pid(state_dir, name)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    cwd = os.readlink(f"/proc/{pid}/cwd")
    try:
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 15
    while _alive(pid):
        assert time.monotonic() < deadline, f"{name} (pid {pid}) survived SIGKILL"
        time.sleep(0.05)
    return [a.decode() for a in argv], cwd


def start_component(state_dir: str | Path, name: str, argv: list[str], cwd: str) -> int:
    """Start a component as `synpo dev-cluster up` does (own session, log appended) and record its pid."""
    sd = Path(state_dir)
    with open(sd / "logs" / f"{name}.log", "ab") as log:
        log.write(f"# restarted by the reliability tests: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=cwd)
    for fname in ("state.json", "pids.json"):
        path = sd / fname
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads(path.read_text())
            (doc["pids"] if fname == "state.json" else doc)[name] = proc.pid
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc, indent=2))
            os.chmod(tmp, 0o600)
            tmp.replace(path)
    return proc.pid


def restart_component(state_dir: str | Path, name: str, down_seconds: float = 3.0) -> int:
    """Kill -9 a component, leave it down for `down_seconds`, start it again; returns the new pid."""
    argv, cwd = kill_component(state_dir, name)
    time.sleep(down_seconds)
    return start_component(state_dir, name, argv, cwd)


def wait_api_ready(kube: KubeClient, timeout: float = 90) -> float:
    """Wait until /readyz answers ok (etcd reachable too); returns the seconds waited."""
    t0 = time.monotonic()
    while True:
        try:
            if kube.get_text("/readyz") == "ok":
                return time.monotonic() - t0
        except Exception:  # noqa: BLE001 - refused, TLS reset, 500 while etcd is away
            pass
        assert time.monotonic() - t0 < timeout, "kube-apiserver not ready again"
        time.sleep(0.25)


# ---- memory ----------------------------------------------------------------------------------------------

def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """Samples a process's RSS every `interval` seconds in a thread; `.peak` and `.samples` (t, bytes)."""

    def __init__(self, pid_of: Callable[[], int | None], interval: float = 0.5):
        self.pid_of = pid_of
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            pid = self.pid_of()
            if pid:
                with contextlib.suppress(OSError):
                    self.samples.append((time.monotonic() - self._t0, rss_bytes(pid)))
            self._stop.wait(self.interval)

    @property
    def peak(self) -> int:
        return max((b for _, b in self.samples), default=0)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


# ---- Jobs and pods ---------------------------------------------------------------------------------------

class JobLedger:
    """Polls a namespace's Jobs (every 50 ms) and records every uid seen per Job name."""

    def __init__(self, kube: KubeClient, namespace: str, interval: float = 0.05):
        self.kube, self.namespace, self.interval = kube, namespace, interval
        self.seen: dict[str, set[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                for job in self.kube.get(f"/apis/batch/v1/namespaces/{self.namespace}/jobs")["items"]:
                    self.seen.setdefault(job["metadata"]["name"], set()).add(job["metadata"]["uid"])
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, set[str]]:
        self._stop.set()
        self._thread.join(5)
        # one last look, so Jobs created just before the stop are counted
        with contextlib.suppress(Exception):
            for job in self.kube.get(f"/apis/batch/v1/namespaces/{self.namespace}/jobs")["items"]:
                self.seen.setdefault(job["metadata"]["name"], set()).add(job["metadata"]["uid"])
        return self.seen

    def duplicated(self) -> dict[str, set[str]]:
        return {name: uids for name, uids in self.seen.items() if len(uids) > 1}


class PodScript:
    """Releases held kwok pods (`synpo.dev/fake-hold: "true"`) of a namespace: `decide(pod)` returns the
    annotations to set when the pod is released (None: leave it held for now). Each pod is decided once."""

    def __init__(self, kube: KubeClient, namespace: str, decide: Callable[[dict], dict[str, Any] | None],
                 interval: float = 0.15):
        self.kube, self.namespace, self.decide, self.interval = kube, namespace, decide, interval
        self.released: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        while not self._stop.is_set():
            try:
                pods = self.kube.get(path)["items"]
            except Exception as err:  # noqa: BLE001
                self.errors.append(str(err))
                pods = []
            for pod in sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"]):
                meta = pod["metadata"]
                if meta["name"] in self.released or meta.get("deletionTimestamp"):
                    continue
                if (meta.get("annotations") or {}).get("synpo.dev/fake-hold") != "true":
                    continue
                if (pod.get("status") or {}).get("phase") != "Running":
                    continue
                patch = self.decide(pod)
                if patch is None:
                    continue
                try:
                    self.kube.patch(f"{path}/{meta['name']}",
                                    {"metadata": {"annotations": {"synpo.dev/fake-hold": None, **patch}}})
                    self.released[meta["name"]] = patch
                except ApiError as err:
                    self.errors.append(str(err))
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, dict[str, Any]]:
        self._stop.set()
        self._thread.join(5)
        return self.released


# ---- comparing runs ------------------------------------------------------------------------------------

def run_summary(run: dict) -> dict[str, Any]:
    """What must be identical between a disturbed and an undisturbed run: phase, the stages and their
    results (row and pair counts, scores; timing-dependent fields dropped) and the per-iteration figures."""
    status = run.get("status") or {}
    stages = {s["name"]: {"phase": s.get("phase"),
                          "result": {k: v for k, v in (s.get("result") or {}).items() if k != "gpuSeconds"}}
              for s in status.get("stages") or []}
    iterations = [{k: it.get(k) for k in ("index", "pairsKept", "pairsTotal", "winRate", "lcWinRate", "score",
                                          "model")}
                  for it in status.get("iterations") or []]
    for it in iterations:  # the model path holds the run's name
        if it.get("model"):
            it["model"] = it["model"].rsplit("/", 3)[-3:]
    return {"phase": status.get("phase"), "stages": stages, "iterations": iterations}


def pairs_total(run: dict) -> int:
    return sum(int(it.get("pairsTotal") or 0) for it in (run.get("status") or {}).get("iterations") or [])
