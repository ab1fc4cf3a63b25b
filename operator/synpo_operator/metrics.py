"""Prometheus metrics of the operator, and the small HTTP server that exposes them (`/metrics`, `/healthz`).

Labels are namespace, run, stage (a stage *name* such as `train`, never free text) and iteration: no label
ever holds a value from a Secret or from a user-written message.

Only the replica that leads exports per-run and per-schedule series (and the run counts by phase): a standby
has none, so a scrape of every replica shows each run once and never a figure a former leader kept.
`synpo_leader{pod}` says which replica leads.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from .api.conditions import STAGE_STUCK
from .api.run import IterationSummary, SynPORunStatus, WinRateFigure
from .clock import parse_time
from .plan.graph import StageId

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, float("inf"))
STAGE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400, float("inf"))


class Metrics:
    """Every metric of the operator in one registry (a fresh instance per test keeps tests independent)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.runs = Gauge("synpo_runs", "SynPORuns by phase", ["phase"], registry=r)
        self.run_iteration = Gauge("synpo_run_iteration", "Iteration in progress per run",
                                   ["namespace", "run"], registry=r)
        self.run_stuck = Gauge("synpo_run_stuck", "1 while a stage of the run cannot start (the StageStuck "
                               "condition), with its reason; absent otherwise", ["namespace", "run", "reason"],
                               registry=r)
        self.stage_duration = Histogram("synpo_stage_duration_seconds", "Run time of finished stages",
                                        ["stage", "outcome"], buckets=STAGE_BUCKETS, registry=r)
        self.stage_failures = Counter("synpo_stage_failures", "Stages that failed (after their retries)",
                                      ["stage"], registry=r)
        self.stage_retries = Counter("synpo_stage_retries", "Failed stage pods that were retried or ended "
                                     "the stage (disruptions excluded)", ["stage"], registry=r)
        self.stage_starts = Counter("synpo_stage_starts", "Stage Jobs created", ["stage"], registry=r)
        self.stage_gpu_seconds = Counter("synpo_stage_gpu_seconds", "GPU-seconds of finished stages",
                                         ["stage"], registry=r)
        self.pairs_kept = Gauge("synpo_pairs_kept", "Preference pairs kept per run and iteration",
                                ["namespace", "run", "iteration"], registry=r)
        self.win_rate = Gauge("synpo_win_rate", "Evaluation win rate of M_t (first judge) per run, iteration and "
                              "opponent (against: references or M0)", ["namespace", "run", "iteration", "against"],
                              registry=r)
        self.win_rate_bound = Gauge("synpo_win_rate_bound", "95% interval of synpo_win_rate (bound: low or high)",
                                    ["namespace", "run", "iteration", "against", "bound"], registry=r)
        self.judge_errors = Gauge("synpo_judge_errors", "Failed judge comparisons of an evaluation (errors after "
                                  "retries, replies without a verdict)", ["namespace", "run", "iteration"],
                                  registry=r)
        self.iteration_gpu_seconds = Gauge("synpo_iteration_gpu_seconds", "GPU-seconds per run and iteration",
                                           ["namespace", "run", "iteration"], registry=r)
        self.reconcile_errors = Counter("synpo_reconcile_errors", "Reconciles that raised an error",
                                        ["kind"], registry=r)
        self.reconciles = Counter("synpo_reconciles", "Reconciles done", registry=r)
        # the run work queue (as client-go's workqueue metrics): where a slow reaction comes from
        self.queue_depth = Gauge("synpo_workqueue_depth", "Runs waiting for a reconcile", registry=r)
        self.queue_wait = Histogram("synpo_workqueue_wait_seconds", "Time a run waited in the queue",
                                    ["lane"], buckets=LATENCY_BUCKETS, registry=r)
        self.burst_deferrals = Counter("synpo_burst_deferrals", "First reconciles that created one Job and "
                                       "deferred the rest (new runs were waiting)", registry=r)
        self.reconcile_duration = Histogram("synpo_reconcile_duration_seconds",
                                            "Time of one reconcile, API calls included",
                                            buckets=LATENCY_BUCKETS, registry=r)
        # schedules
        self.schedule_runs_created = Counter("synpo_schedule_runs_created", "SynPORuns created by schedules",
                                             ["namespace", "schedule"], registry=r)
        self.promotions = Counter("synpo_promotions", "Promotion gate decisions (promoted or refused)",
                                  ["namespace", "schedule", "decision"], registry=r)
        self.promoted_score = Gauge("synpo_promoted_score", "The gate metric's value of the promoted model",
                                    ["namespace", "schedule"], registry=r)
        self.schedule_missed = Counter("synpo_schedule_missed", "Scheduled times that got no run of their own "
                                       "(folded into a later run after an outage, as CronJob does)",
                                       ["namespace", "schedule"], registry=r)
        self.leader = Gauge("synpo_leader", "1 on the replica that holds the Lease and reconciles, 0 on a standby "
                            "(which exports no per-run or per-schedule series)", ["pod"], registry=r)
        self._lock = threading.Lock()
        self._leading = True
        """Per-run and per-schedule series are kept only while True (`set_leader`)."""
        self._phases: dict[tuple[str, str], str] = {}
        self._stuck: dict[tuple[str, str], str] = {}
        self._series: dict[tuple[str, str], set[tuple[Any, tuple[str, ...]]]] = {}
        self.last_reconcile = time.monotonic()
        for phase in PHASES:
            self.runs.labels(phase=phase).set(0)

    # ---- updates ---------------------------------------------------------------------------------
    def _track(self, key: tuple[str, str], metric: Any, labels: tuple[str, ...]) -> None:
        self._series.setdefault(key, set()).add((metric, labels))

    def set_leader(self, pod: str, leading: bool) -> None:
        """This replica (`pod`) leads from now on, or stands by: then every per-run and per-schedule series and
        the run counts by phase go (the next leader exports them; this replica again once it leads again)."""
        with self._lock:
            self._leading = leading
            self.leader.labels(pod=pod).set(1 if leading else 0)
            if leading:
                self._count_phases()
                return
            self._phases.clear()
            self._stuck.clear()
            series, self._series = self._series, {}
            for metric, labels in (item for items in series.values() for item in items):
                _remove(metric, labels)
            for phase in PHASES:
                _remove(self.runs, (phase,))

    def set_phase(self, namespace: str, run: str, phase: str | None) -> None:
        with self._lock:
            if not self._leading:
                return
            key = (namespace, run)
            if phase is None:
                self._phases.pop(key, None)
            else:
                self._phases[key] = phase
            self._count_phases()

    def _count_phases(self) -> None:
        counts = {p: 0 for p in PHASES}
        for p in self._phases.values():
            counts[p] = counts.get(p, 0) + 1
        for p, n in counts.items():
            self.runs.labels(phase=p).set(n)

    def observe(self, namespace: str, run: str, outcome: Any) -> None:
        """Update the metrics from one reconcile's outcome (`reconcile.Outcome`)."""
        self.reconciles.inc()
        self.last_reconcile = time.monotonic()
        self.observe_status(namespace, run, outcome.phase, outcome.status)
        for name in outcome.started:
            self.stage_starts.labels(stage=_stage_name(name)).inc()
        for stage_key, n in (outcome.retries or {}).items():
            self.stage_retries.labels(stage=_stage_name(stage_key)).inc(n)
        for tr in outcome.transitions:
            if tr.new not in ("Succeeded", "Failed") or tr.old == tr.new:
                continue
            stage = _stage_name(tr.key)
            rec = tr.record
            start, end = parse_time(rec.start_time), parse_time(rec.completion_time)
            if start and end and end >= start:
                self.stage_duration.labels(stage=stage, outcome=tr.new).observe((end - start).total_seconds())
            self.stage_gpu_seconds.labels(stage=stage).inc(rec.gpu_seconds or 0.0)
            if tr.new == "Failed":
                self.stage_failures.labels(stage=stage).inc()

    def observe_status(self, namespace: str, run: str, phase: str | None, raw_status: dict | None) -> None:
        """The per-run gauges from a run's status (after a reconcile, or from the cache for a finished run)."""
        self.set_phase(namespace, run, phase)
        key = (namespace, run)
        status = SynPORunStatus.model_validate(raw_status or {})
        stuck = next((c.reason for c in status.conditions if c.type == STAGE_STUCK and c.status == "True"), None)
        with self._lock:
            if not self._leading:
                return
            if status.iteration is not None:
                self.run_iteration.labels(namespace, run).set(status.iteration)
                self._track(key, self.run_iteration, (namespace, run))
            before = self._stuck.pop(key, None)
            if before is not None and before != stuck:
                self.run_stuck.remove(namespace, run, before)
            if stuck is not None:
                self._stuck[key] = stuck
                self.run_stuck.labels(namespace, run, stuck).set(1)
                self._track(key, self.run_stuck, (namespace, run, stuck))
            for summary in status.iterations:
                t = str(summary.index)
                for metric, value in ((self.pairs_kept, summary.pairs_kept), (self.judge_errors, summary.judge_errors),
                                      (self.iteration_gpu_seconds, summary.gpu_seconds)):
                    if value is not None:
                        metric.labels(namespace, run, t).set(value)
                        self._track(key, metric, (namespace, run, t))
                for fig in _win_rates(summary):
                    labels = (namespace, run, t, fig.against)
                    self.win_rate.labels(*labels).set(fig.win_rate)
                    self._track(key, self.win_rate, labels)
                    for bound, value in (("low", fig.win_rate_low), ("high", fig.win_rate_high)):
                        if value is not None:
                            self.win_rate_bound.labels(*labels, bound).set(value)
                            self._track(key, self.win_rate_bound, (*labels, bound))

    def observe_schedule(self, namespace: str, schedule: str, outcome: Any, created: int) -> None:
        """Update the metrics from one schedule step (`schedule.ScheduleOutcome`); `created`: runs created
        now (a 409 for a run an earlier step created does not count)."""
        key = ("schedule", namespace + "/" + schedule)
        if created:
            self.schedule_runs_created.labels(namespace, schedule).inc(created)
        if created and outcome.missed:
            self.schedule_missed.labels(namespace, schedule).inc(outcome.missed)
        for _run, promoted in outcome.promotions:
            self.promotions.labels(namespace, schedule, "promoted" if promoted else "refused").inc()
        value = ((outcome.status or {}).get("promoted") or {}).get("value")
        with self._lock:
            if not self._leading:
                return
            if value is not None:
                self.promoted_score.labels(namespace, schedule).set(value)
                self._track(key, self.promoted_score, (namespace, schedule))
            for metric in (self.schedule_runs_created, self.schedule_missed):
                self._track(key, metric, (namespace, schedule))
            for decision in ("promoted", "refused"):
                self._track(key, self.promotions, (namespace, schedule, decision))

    def forget_schedule(self, namespace: str, schedule: str) -> None:
        """Drop the schedule's series (it was deleted)."""
        with self._lock:
            for metric, labels in self._series.pop(("schedule", namespace + "/" + schedule), set()):
                try:
                    metric.remove(*labels)
                except KeyError:
                    pass

    def error(self, kind: str = "reconcile") -> None:
        self.reconcile_errors.labels(kind=kind).inc()

    def forget(self, namespace: str, run: str) -> None:
        """Drop every per-run series (the run was deleted)."""
        self.set_phase(namespace, run, None)
        with self._lock:
            self._stuck.pop((namespace, run), None)
            for metric, labels in self._series.pop((namespace, run), set()):
                try:
                    metric.remove(*labels)
                except KeyError:
                    pass

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _remove(metric: Any, labels: tuple[str, ...]) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass


def _win_rates(summary: IterationSummary) -> list[WinRateFigure]:
    """Every win rate of an iteration summary with its opponent: one per comparison, else the headline."""
    figures = [c for c in summary.comparisons if c.win_rate is not None]
    if not figures and summary.win_rate is not None and summary.against is not None:
        figures = [WinRateFigure(against=summary.against, n=summary.n or 0, win_rate=summary.win_rate,
                                 win_rate_low=summary.win_rate_low, win_rate_high=summary.win_rate_high)]
    return figures


def _stage_name(key: str) -> str:
    try:
        return StageId.parse(key).name
    except ValueError:
        return "unknown"


METRICS = Metrics()
"""The operator process's metrics."""


class _Handler(BaseHTTPRequestHandler):
    metrics: Metrics = METRICS
    healthy: Any = staticmethod(lambda: True)
    ready: Any = staticmethod(lambda: True)

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, ctype, code = self.metrics.render(), CONTENT_TYPE_LATEST, 200
        elif path in ("/healthz", "/livez", "/readyz"):
            ok = bool(self.ready() if path == "/readyz" else self.healthy())
            body, ctype, code = (b"ok\n" if ok else b"unhealthy\n"), "text/plain", 200 if ok else 503
        else:
            body, ctype, code = b"not found\n", "text/plain", 404
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet access log
        return


def serve(port: int, host: str = "0.0.0.0", metrics: Metrics = METRICS,
          healthy: Any = None, ready: Any = None) -> ThreadingHTTPServer:
    """Serve `/metrics`, `/healthz` (alive) and `/readyz` (`ready()`: the informers have synced) on a daemon
    thread; returns the server (call `.shutdown()`)."""
    handler = type("Handler", (_Handler,), {"metrics": metrics,
                                            "healthy": staticmethod(healthy or (lambda: True)),
                                            "ready": staticmethod(ready or (lambda: True))})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="synpo-metrics", daemon=True).start()
    return server
