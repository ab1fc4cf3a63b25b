"""`synpo run FILE`: the whole SynPO loop on one machine, and `synpo report DIR`.

The operator's reconcile step drives it (the same planner, status and retries); a LocalExecutor runs each
stage as a subprocess. Interrupt it at any time (Ctrl-C or SIGTERM) and run the same command again:
finished stages are kept, the rest continues.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .api.common import API_VERSION
from .api.loader import SpecError, load_file
from .api.run import SynPORun
from .clock import parse_time
from .reconcile import reconcile


def _bar_factory(enabled: bool):
    from tqdm import tqdm

    def make(key: str, position: int) -> Any:
        return tqdm(total=None, desc=f"{key:<22}", position=position, leave=False, dynamic_ncols=True,
                    disable=not enabled, bar_format="{desc} {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}]")

    return make


def run_body(run: SynPORun) -> dict[str, Any]:
    """The run as the reconcile step reads it (what the API server would serve), without a status yet."""
    meta = run.metadata
    return {"apiVersion": API_VERSION, "kind": "SynPORun",
            "metadata": {"name": meta.name, "namespace": meta.namespace or "default", "generation": 1},
            "spec": run.spec.to_api(), "status": {}}


def run_local(run: SynPORun, *, storage_root: str | None = None, parallel: int = 1,
              poll_seconds: float = 1.0, show_progress: bool = True, out=sys.stdout) -> str:
    """Run to completion with the operator's reconcile step and a LocalExecutor; returns the final phase.
    Raises KeyboardInterrupt (Ctrl-C, or SIGTERM) after stopping the running stages."""
    from .executors.local import LocalExecutor

    namespace = run.metadata.namespace or "default"
    executor = LocalExecutor(run.spec, name=run.metadata.name, namespace=namespace, storage_root=storage_root)
    executor.state_dir.mkdir(parents=True, exist_ok=True)
    lock = (executor.state_dir / ".lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SpecError(str(executor.state_dir), ["another `synpo run` is already running this run"]) from None

    make_bar = _bar_factory(show_progress and out.isatty())
    bars: dict[str, Any] = {}
    started = time.monotonic()
    body = run_body(run)
    stopping: list[bool] = []
    print(f"run {namespace}/{run.metadata.name}: artifacts in {executor.root}, logs in {executor.logs_dir}",
          file=out, flush=True)
    with _sigterm_as_interrupt(stopping=lambda: bool(stopping)):
        try:
            while True:
                outcome = reconcile(body, executor, max_attempts=run.spec.backoff_limit + 1,
                                    max_parallel=parallel)
                body["status"] = outcome.status
                _report_transitions(bars, outcome, out)
                if outcome.phase in ("Succeeded", "Failed"):
                    break
                for key in outcome.started:
                    attempt = next(s.get("attempts", 1) for s in outcome.status.get("stages", [])
                                   if s.get("name") == key)
                    retry = f" (attempt {attempt})" if attempt > 1 else ""
                    print(f"→ {key}{retry}", file=out, flush=True)
                    bars[key] = make_bar(key, len(bars))
                for key, bar in bars.items():
                    progress = executor.progress(key)
                    if progress and bar is not None:
                        bar.total, bar.unit = progress.get("total"), progress.get("unit", "")
                        bar.n = progress.get("done", 0)
                        bar.refresh()
                executor.wait(poll_seconds)
        except BaseException:
            stopping.append(True)  # a second SIGTERM must not cut the stop short
            executor.stop()
            raise
        finally:
            for bar in bars.values():
                bar.close()
            lock.close()
    elapsed = time.monotonic() - started
    ready = next((c for c in outcome.status.get("conditions", []) if c.get("type") == "Ready"), {})
    print(f"{outcome.phase}: {ready.get('message', '')} ({elapsed / 60:.1f} min)", file=out, flush=True)
    return outcome.phase


@contextlib.contextmanager
def _sigterm_as_interrupt(stopping: Any):
    """SIGTERM (timeout, a CI runner, systemd) ends `synpo run` as Ctrl-C does: KeyboardInterrupt, so the
    running stages are stopped (their process groups) and the next run redoes them. Once `stopping()`,
    further SIGTERMs are ignored until the stages are stopped."""
    def interrupt(signum: int, frame: Any) -> None:
        if not stopping():
            raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _report_transitions(bars: dict[str, Any], outcome: Any, out) -> None:
    for tr in outcome.transitions:
        if tr.new == "Running":
            continue
        bar = bars.pop(tr.key, None)
        if bar is None:
            continue  # done before this `synpo run` started: nothing to report
        bar.close()
        rec = tr.record
        begun, ended = parse_time(rec.start_time), parse_time(rec.completion_time)
        seconds = (ended - begun).total_seconds() if begun and ended else 0.0
        mark = "✓" if tr.new == "Succeeded" else "✗"
        detail = f": {rec.state.message}" if rec.state.message else ""
        print(f"{mark} {tr.key} {tr.new.lower()} in {seconds:.0f}s{detail}", file=out, flush=True)


def _run_command(args: argparse.Namespace) -> int:
    resource = load_file(args.file, args.set or ())
    if not isinstance(resource, SynPORun):
        raise SpecError(args.file, ["kind: synpo run takes a SynPORun (schedules need the operator)"])
    if resource.spec.storage.uri is None and args.storage is None:
        raise SpecError(args.file, ["spec.storage: synpo run needs storage.uri (a directory or fsspec URI), "
                                    "or --storage DIR; a PVC volume only exists in a cluster"])
    from .modelinfo import model_problems
    from .plan.resources import global_batch_problems

    problems = global_batch_problems(resource.spec) + model_problems(resource.spec)
    if problems:
        raise SpecError(args.file, problems)
    phase = run_local(resource, storage_root=args.storage, parallel=args.parallel)
    if phase == "Succeeded" and not args.no_report:
        from .executors.local import LocalExecutor

        executor = LocalExecutor(resource.spec, name=resource.metadata.name,
                                 namespace=resource.metadata.namespace or "default", storage_root=args.storage)
        return _report(executor.root)
    return 0 if phase == "Succeeded" else 1


def _report(run_dir: str) -> int:
    from synpo_workloads.report import write_report

    path = write_report(run_dir)
    report = Path(path)
    if report.suffix == ".md" and report.exists():
        print(report.read_text(encoding="utf-8"))
    print(f"report: {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run a SynPORun on this machine, no cluster needed (resumable)")
    run.add_argument("file", help="a YAML file holding one SynPORun, e.g. examples/quickstart.yaml")
    run.add_argument("--storage", metavar="DIR", help="artifact root (default: the spec's storage.uri)")
    run.add_argument("--parallel", type=int, default=1, metavar="N",
                     help="stages run at once (default 1: stages share this machine's cores)")
    run.add_argument("--no-report", action="store_true",
                     help="skip writing the report at the end (each evaluate stage still writes it as it finishes)")
    run.add_argument("--set", action="append", metavar="FIELD=VALUE",
                     help="override a field of the file, e.g. --set spec.generation.engine=vllm (repeatable)")
    run.set_defaults(func=_run_command)

    report = sub.add_parser("report", help="write a run's metrics table and plot")
    report.add_argument("dir", help="the run's artifact directory (<storage>/<namespace>/<run>)")
    report.set_defaults(func=lambda a: _report(a.dir))
