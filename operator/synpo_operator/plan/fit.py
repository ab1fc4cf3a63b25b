"""The capacity plan: does every stage's pod hold what it loads? (pure; sizes from plan/sizing.py)

Per stage: nodes × GPUs, the models it loads with their sizes (measured or estimated), host memory needed vs
the pod's memory, local disk needed vs its ephemeral storage, and what it keeps on the model-cache PVC and on
the run's PVC vs their stated `size`. A stage that cannot fit is a problem naming the stage, the resource and
both numbers: `synpo plan` refuses the file and the operator the run (InvalidSpec), before any pod starts,
instead of a pod evicted or OOM-killed an hour in. Where a size is unknown (a model whose name states none and
whose checkpoint is not readable here) nothing is checked, and the plan says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..api.run import SynPORunSpec
from .cache import cache_plan
from .graph import StageNode, stage_graph
from .resources import pod_shape, stage_kind
from .sizing import (
    GIB,
    HEADROOM,
    ModelSize,
    Sizer,
    StageNeeds,
    on_object_store,
    quantity_bytes,
    stage_needs,
)

DATA_PER_STAGE = GIB
"""What a stage writes to the run's storage besides a model: JSONL data, metrics, manifests (generous: 50k
prompts × 2k tokens ≈ 0.4 GB)."""


@dataclass(frozen=True)
class Check:
    """One resource of one stage's pod: needed vs given (None: not known / not set)."""

    resource: str
    needed: int | None
    given: int | None
    field: str
    """The run field that gives it (or how it is derived)."""

    @property
    def fits(self) -> bool:
        return self.needed is None or self.given is None or self.needed <= self.given


@dataclass(frozen=True)
class StageFit:
    node: StageNode
    kind: str
    nodes: int
    gpus: int
    needs: StageNeeds
    checks: tuple[Check, ...]

    @property
    def fits(self) -> bool:
        return all(c.fits for c in self.checks)


def _memory_field(spec: SynPORunSpec, kind: str) -> str:
    section = {"training": spec.resources.training, "generation": spec.resources.generation,
               "scoring": spec.resources.scoring}.get(kind)
    return f"spec.resources.{kind}.memory" if section is not None and section.memory else "spec.resources.memory"


def _bytes(quantity: str | None) -> int | None:
    return quantity_bytes(quantity) if quantity else None


def _checks(spec: SynPORunSpec, node: StageNode, needs: StageNeeds, sizer: Sizer) -> tuple[Check, ...]:
    shape = pod_shape(spec, node)
    checks = [Check("memory", needs.memory, _bytes(shape.memory), _memory_field(spec, shape.kind))]
    shared = spec.storage.model_cache
    local = None if needs.cache is None else needs.scratch + (0 if shared else needs.cache)
    explicit = spec.resources.ephemeral_storage
    request = cache_plan(spec, node, sizer).ephemeral_request  # what the pod asks for (derived, or explicit)
    checks.append(Check("ephemeral-storage", local, _bytes(request),
                        "spec.resources.ephemeralStorage" if explicit else "derived from the models"))
    if shared is not None:
        checks.append(Check("model cache", needs.cache, _bytes(shared.size), "spec.storage.modelCache.size"))
    return tuple(checks)


def stage_fits(spec: SynPORunSpec, sizer: Sizer) -> list[StageFit]:
    fits = []
    for node in stage_graph(spec):
        shape = pod_shape(spec, node)
        needs = stage_needs(spec, node, sizer)
        fits.append(StageFit(node, stage_kind(node), shape.nodes, shape.gpus, needs, _checks(spec, node, needs, sizer)))
    return fits


def _concurrent_training(fits: list[StageFit]) -> int:
    """Training stages that may run at once: the prompt generator and the first improver (neither waits for
    the other); every later one waits for the previous iteration's training."""
    return min(2, sum(1 for f in fits if f.kind == "training"))


def run_checks(spec: SynPORunSpec, fits: list[StageFit]) -> list[Check]:
    """What the whole run keeps on its PVCs (checked when their `size` is stated)."""
    if any(not f.needs.known for f in fits):
        return []
    checkpoints = _concurrent_training(fits) * max((f.needs.checkpoints for f in fits), default=0)
    checks = []
    shared = spec.storage.model_cache
    if shared is not None:
        # nothing evicts cache entries: every distinct model fetched during the run stays
        fetched: dict[str, int] = {}
        for m in (m for f in fits for m in f.needs.models if m.fetched and m.size):
            fetched.setdefault(str(m.ref), m.size.bytes)  # type: ignore[union-attr]  # the files, once
        total = HEADROOM + sum(fetched.values()) + (checkpoints if on_object_store(spec) else 0)
        checks.append(Check("model cache (whole run)", total, _bytes(shared.size), "spec.storage.modelCache.size"))
    volume = spec.storage.volume
    if volume is not None:
        total = sum(f.needs.output + DATA_PER_STAGE for f in fits) + checkpoints
        checks.append(Check("run storage (whole run)", total, _bytes(volume.size), "spec.storage.volume.size"))
    return checks


def _gib(nbytes: int | None) -> str:
    return "?" if nbytes is None else f"{nbytes / GIB:.0f} GiB" if nbytes >= 10 * GIB else f"{nbytes / GIB:.1f} GiB"


def _given(check: Check) -> str:
    return "unset" if check.given is None else _gib(check.given)


def capacity_problems(spec: SynPORunSpec, sizer: Sizer) -> list[str]:
    """One message per resource that does not fit, naming the stages, the resource and both numbers."""
    fits = stage_fits(spec, sizer)
    grouped: dict[tuple[str, int | None, str], list[tuple[str, int | None]]] = {}
    for f in fits:
        for c in f.checks:
            if not c.fits:
                grouped.setdefault((c.resource, c.given, c.field), []).append((f.node.key, c.needed))
    problems = []
    for (resource, given, field), failing in grouped.items():
        keys = [k for k, _ in failing]
        needed = [n or 0 for _, n in failing]
        named = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
        stages = "stage" if len(keys) == 1 else "stages"
        most = ("" if min(needed) == max(needed) else "up to ") + _gib(max(needed))
        problems.append(f"{field}: {stages} {named}: {resource} needs {most} per pod, more than the "
                        f"{_gib(given)} it gives (docs/capacity.md)")
    for c in run_checks(spec, fits):
        if not c.fits:
            problems.append(f"{c.field}: the run's {c.resource} needs {_gib(c.needed)}, more than the "
                            f"{_gib(c.given)} it gives (docs/capacity.md)")
    return problems


def _size(size: ModelSize | None) -> str:
    if size is None:
        return "size unknown"
    return f"{_gib(size.bytes)} {'measured' if size.measured else 'estimated'}: {size.source}"


def _check(c: Check) -> str:
    mark = "" if c.fits else " DOES NOT FIT"
    return f"{c.resource} {_gib(c.needed)} of {_given(c)}{mark}"


def describe_capacity(spec: SynPORunSpec, sizer: Sizer) -> str:
    """The capacity plan as text (`synpo plan FILE --capacity`): per stage, needed vs given per pod."""
    fits = stage_fits(spec, sizer)
    given = {c.field for f in fits for c in f.checks}
    lines = ["capacity plan, per pod: needed of given (given by " + ", ".join(sorted(given))
             + "; formulas in docs/capacity.md)"]
    for f in fits:
        shards = f", {f.node.shards} shards" if f.node.shards > 1 else ""
        lines.append(f"{'ok' if f.fits else 'NO'} {f.node.key} [{f.kind}, {f.nodes} x {f.gpus} GPU{shards}]: "
                     + "; ".join(_check(c) for c in f.checks))
        for m in f.needs.models:
            where = "fetched to /cache" if m.fetched else "read in place"
            lines.append(f"     {m.role}: {m.ref}: {_size(m.size)}; {where}")
        n = f.needs
        if n.known and (n.checkpoints or n.scratch):
            where = "in /cache" if on_object_store(spec) else "on the run's storage"
            lines.append(f"     disk: /cache {_gib(n.cache)}; checkpoints {_gib(n.checkpoints)} {where}; "
                         f"/tmp {_gib(n.scratch)}; output model {_gib(n.output)}")
    checks = run_checks(spec, fits)
    for c in checks:
        lines.append(f"{'ok' if c.fits else 'NO'} the whole run: {_check(c)}")
    bad = [f.node.key for f in fits if not f.fits] + [c.resource for c in checks if not c.fits]
    lines.append("every stage fits" if not bad else f"does not fit: {', '.join(bad)}")
    return "\n".join(lines)
