"""`synpo dev-cluster {build,up,down,status,env}`: argparse wiring.

The main `synpo` CLI calls ``register(subparsers)``; ``python -m synpo_devcluster`` works too.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from importlib import import_module

ADDONS = {"jobset": "addon_jobset", "kueue": "addon_kueue"}
"""Add-on name -> module of this package with `build(force)` and `up(info, build_if_needed)` (build if needed,
start unless running; what `up` returns is printed)."""


def register(subparsers) -> None:
    """Add the `dev-cluster` sub-command to an argparse sub-parsers object."""
    p = subparsers.add_parser(
        "dev-cluster",
        help="local Kubernetes control plane (etcd, apiserver, controller-manager, scheduler, kwok) without Docker",
        description="Build and run a local Kubernetes control plane with a fake GPU node (kwok).",
    )
    sub = p.add_subparsers(dest="dev_cluster_cmd", metavar="{build,up,down,status,env}")
    sub.required = True
    b = sub.add_parser("build", help="build the pinned binaries from the Go module proxy (cached)")
    b.add_argument("--force", action="store_true", help="rebuild even when the cache is up to date")
    b.add_argument("--addons", default="", metavar="NAMES", help="comma-separated add-ons to build too")
    b.set_defaults(func=_cmd_build)
    u = sub.add_parser("up", help="start the cluster (no-op when already up); builds first if needed")
    u.add_argument("--no-build", action="store_true", help="fail instead of building missing binaries")
    u.add_argument("--addons", default="", metavar="NAMES",
                   help=f"comma-separated add-ons to install and start too: {', '.join(ADDONS)}")
    u.set_defaults(func=_cmd_up)
    sub.add_parser("down", help="stop all components and remove the state dir").set_defaults(func=_cmd_down)
    s = sub.add_parser("status", help="report whether the cluster runs")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_status)
    sub.add_parser("env", help="print `export KUBECONFIG=...` for the running cluster").set_defaults(
        func=_cmd_env
    )
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _fail(msg: str) -> int:
    print(f"synpo dev-cluster: error: {msg}", file=sys.stderr)
    return 1


def _addons(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ADDONS]
    if unknown:
        from .cluster import ClusterError

        raise ClusterError(f"--addons: unknown add-on {', '.join(unknown)} (known: {', '.join(ADDONS)})")
    return names


def _guard(fn):
    def wrapper(args) -> int:
        from .build import BuildError
        from .client import ApiError
        from .cluster import ClusterError

        try:
            return fn(args) or 0
        except (BuildError, ClusterError, ApiError, OSError) as e:
            return _fail(str(e))
        except KeyboardInterrupt:
            return _fail("interrupted")

    return wrapper


@_guard
def _cmd_build(args) -> int:
    from . import build

    names = _addons(args.addons)
    out = build.build(force=args.force)
    print(out)
    for name in names:
        print(import_module(f".{ADDONS[name]}", __package__).build(force=args.force))
    return 0


@_guard
def _cmd_up(args) -> int:
    from . import cluster

    names = _addons(args.addons)
    info = cluster.up(build_if_needed=not args.no_build, pin=True)
    addons = {name: import_module(f".{ADDONS[name]}", __package__).up(info, build_if_needed=not args.no_build)
              for name in names}
    print(f"server:     {info.server} ({info.k8s_version})")
    print(f"kubeconfig: {info.kubeconfig}")
    print(f"node:       {info.node_name}")
    print(f"logs:       {info.state_dir}/logs")
    for name, addon in addons.items():
        print(f"add-on:     {name}" + (f" {addon}" if addon is not None else ""))
    print(f"run:        export KUBECONFIG={shlex.quote(info.kubeconfig)}")
    return 0


@_guard
def _cmd_down(args) -> int:
    from . import cluster

    print("stopped" if cluster.down() else "not running")
    return 0


@_guard
def _cmd_status(args) -> int:
    from . import cluster

    st = cluster.status()
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        for k, v in st.items():
            if isinstance(v, dict):
                v = ", ".join(f"{a}={b}" for a, b in v.items())
            print(f"{k + ':':12} {v}")
    return 0 if st["state"] in ("up", "down") else 1


@_guard
def _cmd_env(args) -> int:
    from . import cluster

    info = cluster.running_info()
    if not info:
        return _fail("dev cluster is not running (run `synpo dev-cluster up`)")
    print(f"export KUBECONFIG={shlex.quote(info.kubeconfig)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="synpo")
    subs = parser.add_subparsers(dest="cmd")
    subs.required = True
    register(subs)
    args = parser.parse_args(["dev-cluster", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)
