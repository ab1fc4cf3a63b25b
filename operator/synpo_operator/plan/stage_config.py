"""The JSON a stage program receives (`python -m synpo_workloads <stage> --config stage.json`), and the storage
layout (`<storage root>/<namespace>/<run>/iter-<t>/<stage>/`): the one place that formats it.

Everything is resolved here, so a stage needs no knowledge of the graph: absolute input and output
locations, model references, and the run's whole spec for its settings.
"""

from __future__ import annotations

import posixpath
from typing import Any

from ..api.common import API_VERSION
from ..api.run import SynPORun, SynPORunSpec
from .engines import tensor_parallel_size
from .graph import Artifact, StageNode
from .resources import gpus_for


def run_root(storage_root: str, namespace: str, run: str) -> str:
    """<storage root>/<namespace>/<run>: the run's artifact directory (a path or fsspec URI)."""
    return posixpath.join(storage_root.rstrip("/") or "/", namespace, run)


def storage_uri(spec: SynPORunSpec) -> str:
    """The storage root as users name it: `pvc://<claim>[/<subPath>]` for a volume, else `storage.uri`."""
    volume = spec.storage.volume
    if volume is not None:
        sub = f"/{volume.sub_path.strip('/')}" if volume.sub_path else ""
        return f"pvc://{volume.claim_name}{sub}"
    return spec.storage.uri or ""


def artifacts_uri(run: SynPORun) -> str:
    """Where the run's artifacts live (status.artifacts, `synpo plan`)."""
    return run_root(storage_uri(run.spec), run.metadata.namespace or "default", run.metadata.name)


def _resolve(root: str, ref: str) -> str:
    return posixpath.join(root, ref) if isinstance(ref, Artifact) else ref


def stage_config(spec: SynPORunSpec, node: StageNode, *, namespace: str, run: str,
                 storage_root: str) -> dict[str, Any]:
    """The stage's config document. `storage_root` is as the stage process sees it (mount path or URI)."""
    root = run_root(storage_root, namespace, run)
    return {
        "apiVersion": API_VERSION,
        "kind": "StageConfig",
        "run": run,
        "namespace": namespace,
        "stage": node.id.name,
        "iteration": node.id.iteration,
        "shards": node.shards,
        "gpus": gpus_for(spec, node),  # split into gpus / tensorParallelSize engines (plan/resources.py)
        "tensorParallelSize": tensor_parallel_size(spec),
        "runRoot": root,
        "output": _resolve(root, node.output),
        "inputs": {role: _resolve(root, path) for role, path in node.inputs.items()},
        "models": {role: _resolve(root, ref) for role, ref in node.models.items()},
        "data": dict(node.data),
        "spec": spec.to_api(),
    }
