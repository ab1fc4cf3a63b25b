"""`synpo run FILE`: the whole SynPO loop on one machine, and `synpo report DIR`.

The same planner as the operator decides; a LocalExecutor runs each stage as a subprocess. Interrupt it
at any time and run the same command again: finished stages are kept, the rest continues.
"""

from __future__ import annotations

import argparse
import fcntl
import sys
import time
from pathlib import Path
from typing import Any

from .api.loader import SpecError, load_file
from .api.run import SynPORun
from .plan.planner import plan


def _bar_factory(enabled: bool):
    from tqdm import tqdm

    def make(key: str, position: int) -> Any:
        return tqdm(total=None, desc=f"{key:<22}", position=position, leave=False, dynamic_ncols=True,
                    disable=not enabled, bar_format="{desc} {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}]")

    return make


def run_local(run: SynPORun, *, storage_root: str | None = None, parallel: int = 1,
              poll_seconds: float = 1.0, show_progress: bool = True, out=sys.stdout) -> str:
    """Run to completion; returns the final phase. Raises KeyboardInterrupt after stopping the stages."""
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
    print(f"run {namespace}/{run.metadata.name}: artifacts in {executor.root}, logs in {executor.logs_dir}",
          file=out, flush=True)
    try:
        while True:
            observed = executor.observe()
            decision = plan(run.spec, observed, max_attempts=run.spec.backoff_limit + 1,
                            max_parallel=parallel)
            _finish_bars(bars, observed, executor, out)
            if decision.finished:
                break
            for start in decision.start:
                retry = f" (attempt {start.attempt})" if start.attempt > 1 else ""
                print(f"→ {start.stage.key}{retry}", file=out, flush=True)
                executor.start(start)
                bars[start.stage.key] = make_bar(start.stage.key, len(bars))
            for key, bar in bars.items():
                progress = executor.progress(key)
                if progress and bar is not None:
                    bar.total, bar.unit = progress.get("total"), progress.get("unit", "")
                    bar.n = progress.get("done", 0)
                    bar.refresh()
            executor.wait(poll_seconds)
    except BaseException:
        executor.stop()
        raise
    finally:
        for bar in bars.values():
            bar.close()
        lock.close()
    elapsed = time.monotonic() - started
    print(f"{decision.phase}: {decision.message} ({elapsed / 60:.1f} min)", file=out, flush=True)
    return decision.phase


def _finish_bars(bars: dict[str, Any], observed, executor, out) -> None:
    for key in [k for k in bars if observed.get(k) and observed[k].phase.value != "Running"]:
        bars.pop(key).close()
        state = observed[key]
        attempt = executor._attempts.get(key)
        seconds = time.monotonic() - attempt.started if attempt else 0.0
        mark = "✓" if state.phase.value == "Succeeded" else "✗"
        detail = f": {state.message}" if state.message else ""
        print(f"{mark} {key} {state.phase.value.lower()} in {seconds:.0f}s{detail}", file=out, flush=True)


def _run_command(args: argparse.Namespace) -> int:
    resource = load_file(args.file, args.set or ())
    if not isinstance(resource, SynPORun):
        raise SpecError(args.file, ["kind: synpo run takes a SynPORun (schedules need the operator)"])
    if resource.spec.storage.uri is None and args.storage is None:
        raise SpecError(args.file, ["spec.storage: synpo run needs storage.uri (a directory or fsspec URI), "
                                    "or --storage DIR; a PVC volume only exists in a cluster"])
    from .modelinfo import model_problems

    problems = model_problems(resource.spec)
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
    run.add_argument("--no-report", action="store_true", help="skip writing the report at the end")
    run.add_argument("--set", action="append", metavar="FIELD=VALUE",
                     help="override a field of the file, e.g. --set spec.generation.engine=vllm (repeatable)")
    run.set_defaults(func=_run_command)

    report = sub.add_parser("report", help="write a run's metrics table and plot")
    report.add_argument("dir", help="the run's artifact directory (<storage>/<namespace>/<run>)")
    report.set_defaults(func=lambda a: _report(a.dir))
