"""The stage pods' cache (/cache: models fetched from object storage or a hub) and local disk (pure).

With `storage.modelCache` every pod mounts one PVC there, so a model is fetched once and read by every later
stage (the workloads publish each fetched model atomically; models.py). Without it each pod has an emptyDir,
fetched again per stage, whose size limit and the pod's ephemeral-storage request come from
`resources.ephemeralStorage` or, when the size of every model the stage loads is known, from plan/sizing.py:
the cache holds what the stage fetches (and a training stage's resume checkpoints on an object store); the
request adds the finished model a training stage on an object store saves under /tmp before the upload.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..api.run import SynPORunSpec
from .graph import StageNode
from .resources import stage_kind
from .sizing import GIB, Sizer, gib, name_estimate, stage_needs

__all__ = ["GIB", "CachePlan", "cache_plan", "model_bytes"]


def model_bytes(ref: str) -> int | None:
    """Bytes of a model's bf16 weights estimated from its name (sizing.name_estimate); None when unknown."""
    size = name_estimate(ref)
    return size.bytes if size else None


@dataclass(frozen=True)
class CachePlan:
    """The cache of one stage pod: a shared PVC, or an emptyDir with an optional size limit; and the pod's
    ephemeral-storage request (None: no request)."""

    claim_name: str | None
    sub_path: str | None
    size_limit: str | None
    ephemeral_request: str | None


def cache_plan(spec: SynPORunSpec, node: StageNode, sizer: Sizer = name_estimate) -> CachePlan:
    shared = spec.storage.model_cache
    claim, sub_path = (shared.claim_name, shared.sub_path) if shared else (None, None)
    if stage_kind(node) == "cpu":  # loads no model of the run's (keywords; a similarity scorer's small one)
        return CachePlan(claim, sub_path, None, None)
    explicit = spec.resources.ephemeral_storage
    if explicit:
        return CachePlan(claim, sub_path, None if shared else explicit, explicit)
    needs = stage_needs(spec, node, sizer)
    if needs.cache is None:
        return CachePlan(claim, sub_path, None, None)
    if shared:
        return CachePlan(claim, sub_path, None, gib(needs.scratch + GIB) if needs.scratch else None)
    return CachePlan(None, None, gib(needs.cache), gib(needs.cache + needs.scratch))
