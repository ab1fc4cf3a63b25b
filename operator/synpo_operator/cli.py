"""The `synpo` command line. Each sub-command lives in the module that implements it; this file only wires
them together, and turns expected errors (bad input files) into one-screen messages instead of tracebacks."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .api.loader import SpecError

# Modules that add their own sub-commands with `register(subparsers)`; imported lazily so that a missing
# optional extra (kopf, torch) only matters to the command that needs it.
PLUGINS = (
    "synpo_operator.localrun",          # synpo run, synpo report
    "synpo_operator.controller.cli",    # synpo operator
)
OPTIONAL_PLUGINS = {
    # sub-command: (module, what to install when it is missing)
    "dev-cluster": ("synpo_devcluster.cli", "the synpo-devcluster package (development only): "
                                            "pip install -e ./devcluster in a checkout of the repository"),
}


def _plan(args: argparse.Namespace) -> int:
    from .api.loader import load_file
    from .api.run import SynPORun
    from .render import describe_plan

    resource = load_file(args.file)
    if isinstance(resource, SynPORun):
        from .modelinfo import capacity_problems, model_problems, model_size
        from .plan.resources import global_batch_problems

        if args.capacity:  # printed first: it shows the numbers behind a refusal below
            from .plan.fit import describe_capacity

            print(describe_capacity(resource.spec, model_size))
        problems = global_batch_problems(resource.spec) + model_problems(resource.spec) + \
            capacity_problems(resource.spec)
        if problems:
            raise SpecError(args.file, problems)
        if args.capacity:
            return 0
    elif args.capacity:
        raise SpecError(args.file, ["kind: --capacity needs a SynPORun"])
    if args.preflight:
        if not isinstance(resource, SynPORun):
            raise SpecError(args.file, ["kind: --preflight needs a SynPORun"])
        return _preflight(resource)
    if args.manifests:
        if not isinstance(resource, SynPORun):
            raise SpecError(args.file, ["kind: --manifests needs a SynPORun"])
        import yaml

        from .api.crd import KubeDumper
        from .executors.manifests import render_run_manifests

        manifests = render_run_manifests(resource, all_stages=args.all)
        print(yaml.dump_all(manifests, Dumper=KubeDumper, sort_keys=False, width=120), end="")
        return 0
    print(describe_plan(resource))
    return 0


def _preflight(run) -> int:
    """The run's pre-flight checks from this machine, with its environment standing in for the pods' (the
    same program the pre-flight stage runs, in checks-only mode: nothing is written but the storage probe).
    The workloads package runs as a subprocess: the operator package never imports it."""
    import json
    import subprocess
    import tempfile

    from .plan.graph import preflight_node
    from .plan.stage_config import stage_config

    root = run.spec.storage.uri or ""
    if root and "://" not in root:
        root = str(Path(root).expanduser().resolve())
    config = stage_config(run.spec, preflight_node(run.spec), namespace=run.metadata.namespace or "default",
                          run=run.metadata.name, storage_root=root)
    with tempfile.TemporaryDirectory(prefix="synpo-preflight-") as tmp:
        path = Path(tmp) / "preflight.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        extra = ["--no-storage"] if run.spec.storage.volume is not None else []
        if extra:
            print("spec.storage.volume: a PVC only the pods mount; checked by the run's own pre-flight")
        return subprocess.call([sys.executable, "-m", "synpo_workloads.stages.preflight", "--config", str(path),
                                *extra])


def _crds(args: argparse.Namespace) -> int:
    from .api.crd import crd_files, render_all

    for directory in args.write or []:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in crd_files().items():
            (out / name).write_text(text, encoding="utf-8")
            print(f"wrote {out / name}")
    if not args.write:
        print(render_all(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synpo", description="SynPO: self-boosting LLM alignment, on "
                                     "Kubernetes or on one machine.")
    parser.add_argument("--version", action="version", version=f"synpo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    plan = sub.add_parser("plan", help="validate a run file and print its stage graph")
    plan.add_argument("file", help="a YAML file holding one SynPORun or SynPOSchedule")
    plan.add_argument("--manifests", action="store_true", help="print the Jobs (JobSets for training on several nodes) the operator would create")
    plan.add_argument("--all", action="store_true", help="with --manifests: every stage, not only the first")
    plan.add_argument("--capacity", action="store_true", help="print per stage the models it loads and the memory "
                      "and disk its pods need vs get; a stage that cannot fit is refused (docs/capacity.md)")
    plan.add_argument("--preflight", action="store_true",
                      help="run the pre-flight checks (models, data, judges, storage) from this machine")
    plan.set_defaults(func=_plan)

    crds = sub.add_parser("crds", help="print the CustomResourceDefinitions (generated from the API models)")
    crds.add_argument("--write", metavar="DIR", action="append",
                      help="write one file per CRD into DIR instead (repeatable: crds/ and the chart's crds/)")
    crds.set_defaults(func=_crds)

    for module in PLUGINS:
        try:
            register: Callable[[argparse._SubParsersAction], None] = importlib.import_module(module).register
        except ModuleNotFoundError as err:
            if err.name and not module.startswith(err.name):  # the plugin exists but needs a missing extra
                raise
            continue
        register(sub)
    for command, (module, missing) in OPTIONAL_PLUGINS.items():
        try:
            register = importlib.import_module(module).register
        except ModuleNotFoundError as err:
            if err.name and not module.startswith(err.name):
                raise
            stub = sub.add_parser(command, help=f"(not installed: needs {missing.split(' (')[0]})",
                                  add_help=False)
            stub.add_argument("rest", nargs=argparse.REMAINDER)
            stub.set_defaults(func=lambda args, c=command, m=missing: _missing(c, m))
            continue
        register(sub)
    return parser


def _missing(command: str, what: str) -> int:
    print(f"synpo {command}: not installed here; it needs {what}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SpecError as err:
        print(err.render(), file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `synpo plan FILE | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue where it stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
