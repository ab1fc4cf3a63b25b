"""The stage pods' cache (/cache: models fetched from object storage or a hub) and local disk (pure).

With `storage.modelCache` every pod mounts one PVC there, so a model is fetched once and read by every later
stage (the workloads publish each fetched model atomically; models.py). Without it each pod has an emptyDir,
fetched again per stage, whose size limit and the pod's ephemeral-storage request come from
`resources.ephemeralStorage` or, when the model's name says its parameter count, from this estimate:

- the cache holds the base model, plus the stage's input model when storage is an object store (read in
  place from a PVC), plus, for a training stage on an object store, its resume checkpoints (weights and Adam
  state: about 4× the bf16 weights), plus 2 GiB for tokenizers and compiler caches;
- a training stage on an object store also saves the finished model under /tmp before uploading it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..api.run import SynPORunSpec
from .graph import StageNode
from .resources import stage_kind

GIB = 1 << 30
HEADROOM = 2 * GIB
BYTES_PER_PARAM = 2
"""bf16 weights, as checkpoints are shared (float32 checkpoints are twice as large: set ephemeralStorage)."""
CHECKPOINT_FACTOR = 4
_SIZE = re.compile(r"(?:^|[-_./])(?:(\d+)x)?(\d+(?:\.\d+)?)([bBmM])(?=$|[-_./])")


def model_bytes(ref: str) -> int | None:
    """Bytes of a model's bf16 weights when its name states the parameter count (Meta-Llama-3-8B-SFT → 16e9,
    SmolLM2-135M → 2.7e8; Mixtral-8x7B → 112e9, an upper bound: its experts share attention, 47B in all);
    None when it does not."""
    name = ref.rstrip("/").rsplit("/", 1)[-1]
    matches = list(_SIZE.finditer(name))
    if not matches:
        return None
    experts, count, unit = matches[0].groups()
    params = float(count) * (1e9 if unit in "bB" else 1e6) * (int(experts) if experts else 1)
    return int(params * BYTES_PER_PARAM)


def _quantity(nbytes: int) -> str:
    return f"{-(-nbytes // GIB)}Gi"  # whole GiB, rounded up


@dataclass(frozen=True)
class CachePlan:
    """The cache of one stage pod: a shared PVC, or an emptyDir with an optional size limit; and the pod's
    ephemeral-storage request (None: no request)."""

    claim_name: str | None
    sub_path: str | None
    size_limit: str | None
    ephemeral_request: str | None


def cache_plan(spec: SynPORunSpec, node: StageNode) -> CachePlan:
    shared = spec.storage.model_cache
    if stage_kind(node) == "cpu":  # loads no model of the run's (keywords; a similarity scorer's small one)
        return CachePlan(shared.claim_name if shared else None, shared.sub_path if shared else None, None, None)
    explicit = spec.resources.ephemeral_storage
    if explicit:
        return CachePlan(shared.claim_name if shared else None, shared.sub_path if shared else None,
                         None if shared else explicit, explicit)
    model = model_bytes(spec.model.base)
    if model is None:
        return CachePlan(shared.claim_name if shared else None, shared.sub_path if shared else None, None, None)
    on_object_store = spec.storage.uri is not None
    training = stage_kind(node) == "training"
    scratch = model if (training and on_object_store) else 0
    if shared:
        request = _quantity(scratch + GIB) if scratch else None
        return CachePlan(shared.claim_name, shared.sub_path, None, request)
    cache = HEADROOM + model * (2 if on_object_store else 1)
    if training and on_object_store:
        cache += CHECKPOINT_FACTOR * model
    return CachePlan(None, None, _quantity(cache), _quantity(cache + scratch))
