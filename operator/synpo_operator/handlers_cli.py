"""`synpo operator`: run the Kopf operator (Jobs executor by default, or local processes)."""

from __future__ import annotations

import argparse
import logging
import os

from .kube import DEFAULT_BURST, DEFAULT_QPS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "operator", help="run the SynPO operator (reconciles SynPORuns into Jobs)",
        description="Run the SynPO operator against the cluster of $KUBECONFIG (or in-cluster config).")
    p.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                   help="watch this namespace (repeatable; glob patterns allowed); default: all namespaces")
    p.add_argument("--executor", choices=("jobs", "local"), default="jobs",
                   help="jobs: a Kubernetes Job per stage (default); local: stages as local processes of the "
                        "operator (storage.uri must be a local directory)")
    p.add_argument("--metrics-port", type=int, default=8080,
                   help="port of /metrics and /healthz (default 8080; 0 disables)")
    p.add_argument("--health-port", type=int, default=8081,
                   help="port of kopf's liveness endpoint /healthz (default 8081; 0 disables)")
    p.add_argument("--resync-seconds", type=float,
                   default=float(os.environ.get("SYNPO_OPERATOR_RESYNC_SECONDS", "30")),
                   help="how often every run is reconciled even without events (default 30)")
    p.add_argument("--workers", type=int, default=16, help="threads for reconciles (default 16)")
    p.add_argument("--max-active-runs", type=_cap, metavar="N",
                   default=os.environ.get("SYNPO_MAX_ACTIVE_RUNS") or "0",
                   help="at most N started, unfinished runs across the watched namespaces; further runs wait "
                        "in phase Pending (WaitingForCapacity), oldest first (default 0: no cap; env "
                        "SYNPO_MAX_ACTIVE_RUNS)")
    p.add_argument("--max-active-runs-per-namespace", type=_cap, metavar="N",
                   default=os.environ.get("SYNPO_MAX_ACTIVE_RUNS_PER_NAMESPACE") or "0",
                   help="the same cap per namespace (default 0: no cap; env SYNPO_MAX_ACTIVE_RUNS_PER_NAMESPACE)")
    p.add_argument("--kube-qps", type=_rate, default=DEFAULT_QPS, metavar="QPS",
                   help="client-side limit of the operator's API requests per second, after a burst of "
                        f"--kube-burst (default {DEFAULT_QPS:g}; 0: no limit)")
    p.add_argument("--kube-burst", type=_cap, default=DEFAULT_BURST, metavar="N",
                   help=f"requests allowed at once before --kube-qps applies (default {DEFAULT_BURST})")
    p.add_argument("--verbose", "-v", action="store_true", help="log every handler call")
    p.set_defaults(func=_run)


def _cap(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError("must be 0 (no cap) or more")
    return n


def _rate(value: str) -> float:
    try:
        qps = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not qps >= 0 or qps == float("inf"):
        raise argparse.ArgumentTypeError("must be 0 (no limit) or a positive number")
    return qps


def _run(args: argparse.Namespace) -> int:
    # handlers read these at import time (kopf decorators take their intervals then)
    os.environ["SYNPO_OPERATOR_EXECUTOR"] = args.executor
    os.environ["SYNPO_OPERATOR_NAMESPACES"] = ",".join(args.namespace)
    os.environ["SYNPO_MAX_ACTIVE_RUNS"] = str(args.max_active_runs)
    os.environ["SYNPO_MAX_ACTIVE_RUNS_PER_NAMESPACE"] = str(args.max_active_runs_per_namespace)
    os.environ["SYNPO_OPERATOR_RESYNC_SECONDS"] = str(args.resync_seconds)
    os.environ["SYNPO_OPERATOR_WORKERS"] = str(args.workers)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # kopf logs every handler call at INFO; keep ours and kopf's warnings
        for noisy in ("kopf.objects", "kopf.activities.probe", "kopf._core.engines.peering",
                      "kopf._core.reactor.running", "kopf._cogs.clients.watching", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)

    import kopf

    from . import (
        handlers,  # noqa: F401 - registers the handlers
        kube,
        metrics,
    )

    kube.set_rate_limit(args.kube_qps, max(1, args.kube_burst))

    if args.metrics_port:
        metrics.serve(args.metrics_port)
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=liveness,
    )
    return 0
