"""`synpo operator`: the command line, turned into `Settings` once and handed to the Kopf runner."""

from __future__ import annotations

import argparse
import logging
import os

from ..capacity import Caps
from ..kube import DEFAULT_BURST, DEFAULT_QPS
from .settings import Settings


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
                   help="port of /metrics, /healthz and /readyz (default 8080; 0 disables)")
    p.add_argument("--health-port", type=int, default=8081,
                   help="port of kopf's liveness endpoint /healthz (default 8081; 0 disables)")
    p.add_argument("--resync-seconds", type=float,
                   default=float(os.environ.get("SYNPO_OPERATOR_RESYNC_SECONDS", "30")),
                   help="how often every run is reconciled even without events (default 30)")
    p.add_argument("--workers", type=int, default=16, help="threads for reconciles (default 16)")
    p.add_argument("--stall-seconds", type=float, default=300.0,
                   help="liveness fails (the pod is restarted) when one reconcile has run this long, or runs "
                        "have waited this long while no worker took one (default 300)")
    p.add_argument("--max-active-runs", type=_cap, metavar="N",
                   default=os.environ.get("SYNPO_MAX_ACTIVE_RUNS") or "0",
                   help="at most N started, unfinished runs across the watched namespaces; further runs wait "
                        "in phase Pending (WaitingForCapacity), oldest first (default 0: no cap; env "
                        "SYNPO_MAX_ACTIVE_RUNS)")
    p.add_argument("--max-active-runs-per-namespace", type=_cap, metavar="N",
                   default=os.environ.get("SYNPO_MAX_ACTIVE_RUNS_PER_NAMESPACE") or "0",
                   help="the same cap per namespace (default 0: no cap; env SYNPO_MAX_ACTIVE_RUNS_PER_NAMESPACE)")
    p.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True,
                   help="only the holder of a coordination.k8s.io Lease reconciles (default on: run several "
                        "replicas, one active, the others on standby)")
    p.add_argument("--lease-name", default="synpo-operator", help="the Lease's name (default synpo-operator)")
    p.add_argument("--lease-namespace", default=None, metavar="NS",
                   help="the Lease's namespace (default: $POD_NAMESPACE, else the first watched namespace, "
                        "else default)")
    p.add_argument("--lease-seconds", type=float, default=15.0,
                   help="a standby takes over this long after the leader's last renewal (default 15)")
    p.add_argument("--renew-seconds", type=float, default=5.0,
                   help="how often the leader renews the Lease (default 5)")
    p.add_argument("--identity", default=None,
                   help="this replica's name in the Lease (default: $POD_NAME, else host name and pid)")
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


def settings_from_args(args: argparse.Namespace) -> Settings:
    literal = [n for n in args.namespace if not any(ch in n for ch in "*?[")]
    lease_namespace = args.lease_namespace or os.environ.get("POD_NAMESPACE") or (
        literal[0] if literal else "default")
    extra = {"identity": args.identity or os.environ["POD_NAME"]} if (args.identity or os.environ.get("POD_NAME")) \
        else {}
    return Settings(
        executor=args.executor, namespaces=tuple(args.namespace), resync_seconds=args.resync_seconds,
        workers=args.workers, stall_seconds=args.stall_seconds,
        caps=Caps.parse(args.max_active_runs, args.max_active_runs_per_namespace),
        metrics_port=args.metrics_port, health_port=args.health_port, verbose=args.verbose,
        leader_election=args.leader_elect, lease_name=args.lease_name, lease_namespace=lease_namespace,
        lease_seconds=args.lease_seconds, renew_seconds=args.renew_seconds,
        kube_qps=args.kube_qps, kube_burst=max(1, args.kube_burst), **extra)


def _rate(value: str) -> float:
    try:
        qps = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not qps >= 0 or qps == float("inf"):
        raise argparse.ArgumentTypeError("must be 0 (no limit) or a positive number")
    return qps


def _run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # kopf logs every handler call at INFO; keep ours and kopf's warnings
        for noisy in ("kopf.objects", "kopf.activities.probe", "kopf._core.engines.peering",
                      "kopf._core.reactor.running", "kopf._cogs.clients.watching", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)

    from .kopf_app import run

    run(settings)
    return 0
