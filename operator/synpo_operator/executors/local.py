"""LocalExecutor: runs each stage as a local subprocess (`synpo run`, `synpo operator --executor local`).

It implements `plan.executor.Executor`, as the Jobs executor does, and the same reconcile step drives it.
Each stage runs the container's command (plan/launch.py). A training stage on several "nodes"
(resources.training.nodes > 1) starts one torchrun per node on this machine, rendezvousing on 127.0.0.1 at a
free port (gloo on the CPU), as the pods of a JobSet would; when one node's process fails, the others are
stopped (a survivor would otherwise wait in a collective for its dead peer).
State lives in the artifact store, exactly as in the cluster: a stage is done when its manifest says so,
so a run interrupted at any point continues where it stopped, and finished stages are never redone.
"""

from __future__ import annotations

import json
import os
import posixpath
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import clock
from ..api.results import BAD_INPUT_EXIT_CODE, SCALAR
from ..api.run import SynPORunSpec
from ..plan.executor import StageRecord
from ..plan.graph import StageNode, stage_graph
from ..plan.launch import distributed_env, launch_command
from ..plan.planner import StagePhase, StageState, Start
from ..plan.resources import pod_shape
from ..plan.stage_config import run_root, stage_config

PROGRESS_PREFIX = "SYNPO_PROGRESS "
"""Stage programs print `SYNPO_PROGRESS {"done": n, "total": m, "unit": "..."}` lines (synpo_workloads.progress);
`synpo run` shows them as bars."""


def _store():
    # Imported lazily: the operator image may run without the workloads package when using Jobs.
    from synpo_workloads import store

    return store


@dataclass
class _Attempt:
    node: StageNode
    attempt: int
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    started: str = field(default_factory=lambda: clock.rfc3339(clock.now()))
    finished: str | None = None
    """When the executor first saw every process of the attempt exited."""
    nodes: int = 1
    """Processes that make up one distributed training attempt (one per node), or 1."""

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def stop_survivors(self) -> None:
        """One process of a multi-node attempt failed: the attempt has failed, end the others. (Shards of a
        sharded stage are independent: the others finish, and their parts are kept for the retry.)"""
        if self.nodes > 1 and any(p.poll() not in (None, 0) for p in self.procs):
            for proc in self.procs:
                if proc.poll() is None:
                    _signal_group(proc, signal.SIGTERM)


class LocalExecutor:
    """Runs the stages of one run as subprocesses of this process."""

    def __init__(self, spec: SynPORunSpec, *, name: str, namespace: str = "default",
                 storage_root: str | None = None, python: str = sys.executable,
                 extra_env: dict[str, str] | None = None):
        self.spec = spec
        self.name = name
        self.namespace = namespace
        root = storage_root or spec.storage.uri
        if root is None:
            raise ValueError("spec.storage: local execution needs storage.uri (a local directory or fsspec URI), "
                             "not a PVC volume")
        if "://" not in root:
            root = str(Path(root).expanduser().resolve())
        self.storage_root = root
        self.root = run_root(root, namespace, name)
        local = "://" not in self.root
        self.state_dir = Path(self.root if local else Path.home() / ".cache/synpo/runs" / namespace / name)
        self.logs_dir = self.state_dir / "logs"
        self.python = python
        self.extra_env = extra_env or {}
        self._nodes = {n.key: n for n in stage_graph(spec)}
        self._attempts: dict[str, _Attempt] = {}
        self._results: dict[str, dict[str, Any]] = {}
        """Results of the stages seen done."""

    # --- the Executor contract ------------------------------------------------------------------------

    def records(self) -> dict[str, StageRecord]:
        store = _store()
        out: dict[str, StageRecord] = {}
        for key, node in self._nodes.items():
            current = self._attempts.get(key)
            if current:
                current.stop_survivors()
            times = {"start_time": current.started} if current else {}
            if current and current.running():
                out[key] = StageRecord(key, StageState(StagePhase.RUNNING, current.attempt), **times)
                continue
            if current and current.finished is None:
                current.finished = clock.rfc3339(clock.now())
            if key in self._results or self._done(store, node):
                if key not in self._results:  # verified once (model checksums are not cheap), then trusted
                    result = store.stage_result(self.output(node), node.shards)
                    self._results[key] = {k: v for k, v in result.items() if isinstance(v, SCALAR)}
                out[key] = StageRecord(key, StageState(StagePhase.SUCCEEDED, current.attempt if current else 1),
                                       completion_time=current.finished if current else None,
                                       result=self._results[key], **times)
            elif current:
                out[key] = StageRecord(key, self._failed(current), completion_time=current.finished, **times)
        return out

    def _done(self, store: Any, node: StageNode) -> bool:
        """Whether the stage's manifest is there. A store that refuses the read (wrong credentials) counts as
        holding nothing, so the pre-flight runs and fails the run naming spec.storage.uri; a crash here would
        not say which field is wrong."""
        try:
            return store.stage_done(self.output(node), node.shards)
        except PermissionError:
            return False

    def start(self, starts: Sequence[Start]) -> list[bool]:
        return [self._spawn(s) for s in starts]

    def _spawn(self, start: Start) -> bool:
        node = start.stage
        current = self._attempts.get(node.key)
        if current and current.attempt >= start.attempt:
            return False
        config_path = self.state_dir / "configs" / f"{node.key}.json"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        config = stage_config(self.spec, node, namespace=self.namespace, run=self.name,
                              storage_root=self.storage_root)
        config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        shape = pod_shape(self.spec, node)
        attempt = _Attempt(node, start.attempt, nodes=shape.nodes)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self._spec_env(), **self.extra_env}
        command = launch_command(shape, node.id.name, str(config_path))
        # the container's command, with this interpreter (and its torch) instead of the image's
        command = ([self.python, "-m", "torch.distributed.run"] if command[0] == "torchrun" else [self.python]) \
            + command[1:]
        port = _free_port() if shape.nodes > 1 else 0
        if shape.nodes > 1:  # a training stage on several nodes: one torchrun per node
            launches = [(0, str(rank)) for rank in range(shape.nodes)]
        else:  # one process per shard
            launches = [(shard, None) for shard in range(node.shards)]
        for shard, rank in launches:
            suffix = f"-shard-{shard}" if node.shards > 1 else f"-node-{rank}" if rank else ""
            log = self.logs_dir / f"{node.key}{suffix}.log"
            result = self.state_dir / "results" / f"{node.key}{suffix}.json"
            result.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a", encoding="utf-8") as out:
                out.write(f"\n=== {node.key}{suffix} attempt {start.attempt} "
                          f"at {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
                out.flush()
                # its own session (process group): stop() signals the stage and every process it started
                attempt.procs.append(subprocess.Popen(
                    [*command, "--shard", str(shard)], stdout=out, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                    env={**env, "SYNPO_TERMINATION_LOG": str(result),
                         **distributed_env(shape, master_addr="127.0.0.1", master_port=port, node_rank=rank)}))
            attempt.logs.append(log)
        self._attempts[node.key] = attempt
        return True

    def stop(self, grace_seconds: float = 10.0) -> list[str]:
        """SIGTERM to the process group of every running stage, SIGKILL after `grace_seconds`; the stopped
        attempts are forgotten, so those stages start afresh on resume (their partial output is discarded)."""
        stopped = {k: a for k, a in self._attempts.items() if a.running()}
        procs = [p for a in stopped.values() for p in a.procs if p.poll() is None]
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        for key in stopped:
            del self._attempts[key]
        return sorted(stopped)

    def discard(self, keys: Sequence[str]) -> None:
        """Forget these stages' attempts and results (a pre-flight of an older spec: its output is keyed by the
        spec, so the new one writes elsewhere)."""
        for key in keys:
            self._attempts.pop(key, None)
            self._results.pop(key, None)

    # --- helpers --------------------------------------------------------------------------------------

    def output(self, node: StageNode) -> str:
        return posixpath.join(self.root, node.output)

    def running(self) -> dict[str, _Attempt]:
        return {k: a for k, a in self._attempts.items() if a.running()}

    def progress(self, key: str) -> dict[str, Any] | None:
        """The newest progress line the stage printed, if any."""
        attempt = self._attempts.get(key)
        latest = None
        for log in attempt.logs if attempt else []:
            tail = _tail(log, 8192)
            for line in tail.splitlines():
                if line.startswith(PROGRESS_PREFIX):
                    try:
                        latest = json.loads(line[len(PROGRESS_PREFIX):])
                    except json.JSONDecodeError:
                        pass
        return latest

    def wait(self, timeout: float) -> None:
        """Sleep until a stage process exits or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for a in self.running().values() for p in a.procs) or not self.running():
                return
            time.sleep(0.2)

    def _spec_env(self) -> dict[str, str]:
        # Secret references cannot be resolved without a cluster: such variables are taken from this
        # process's environment (inherited as is), literal values are set.
        return {e.name: e.value for e in self.spec.env if e.value is not None}

    def _failed(self, attempt: _Attempt) -> StageState:
        codes = [p.returncode for p in attempt.procs]
        # the failure, not a survivor that stop_survivors ended
        bad = next((i for i, c in enumerate(codes) if c not in (0, -signal.SIGTERM)),
                   next((i for i, c in enumerate(codes) if c != 0), None))
        if bad is None:  # exited 0 but its manifest is missing or invalid
            return StageState(StagePhase.FAILED, attempt.attempt,
                              f"exited 0 without a valid manifest; log: {attempt.logs[0]}")
        last = _last_error_line(attempt.logs[bad])
        reason = f"exit code {codes[bad]}" + (f": {last}" if last else "")
        return StageState(StagePhase.FAILED, attempt.attempt, f"{reason} (log: {attempt.logs[bad]})",
                          retryable=codes[bad] != BAD_INPUT_EXIT_CODE)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _tail(path: Path, size: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _last_error_line(log: Path) -> str:
    lines = [ln.strip() for ln in _tail(log, 16384).splitlines()
             if ln.strip() and not ln.startswith((PROGRESS_PREFIX, "==="))]
    return lines[-1][:500] if lines else ""
