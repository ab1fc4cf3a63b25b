"""Human-readable views of a resource's plan (for `synpo plan`)."""

from __future__ import annotations

from .api.run import SynPORun, SynPORunSpec
from .api.schedule import SynPOSchedule
from .plan.engines import tensor_parallel_size
from .plan.graph import Artifact, stage_graph
from .plan.resources import pod_shape
from .plan.stage_config import run_root, storage_uri


def _ref(value: str) -> str:
    return f"<run>/{value}" if isinstance(value, Artifact) else value


def describe_spec(spec: SynPORunSpec, name: str, namespace: str) -> list[str]:
    graph = stage_graph(spec)
    root = run_root(storage_uri(spec), namespace, name)
    lines = [
        f"{spec.iterations} iteration(s), {len(graph)} stages; "
        f"{spec.prompts_per_iteration} prompts and {spec.pairs_per_iteration} pairs per iteration; "
        f"training: {spec.training.loss}; engine: {spec.generation.engine} x{spec.generation.shards} shard(s)",
        f"artifacts: <run> = {root}",
    ]
    iteration = None
    for node in graph:
        if node.id.iteration != iteration:
            iteration = node.id.iteration
            lines.append("")
            lines.append("iteration 0 (once per run)" if iteration == 0 else f"iteration {iteration}")
        shards = f"  [{node.shards} shards]" if node.shards > 1 else ""
        shape = pod_shape(spec, node)
        nodes = f"{shape.nodes} nodes x " if shape.nodes > 1 else ""
        device = f"{shape.kind}, {nodes}{shape.gpus} gpu" if shape.gpus else f"{shape.kind}, cpu"
        if shape.kind == "generation" and shape.gpus and spec.generation.engine == "vllm":
            tp = tensor_parallel_size(spec)
            device += f": {shape.gpus // tp} engine(s) x tensor parallel {tp}"
        if shape.cpu or shape.memory:
            device += f"; {shape.cpu or '-'} cpu, {shape.memory or '-'}"
        lines.append(f"  {node.key}{shards}  ({device})")
        lines.append(f"      after:  {', '.join(n.key for n in node.needs) or '-'}")
        reads = [f"{k}={v}" for k, v in node.data.items()]
        reads += [f"{k}={_ref(v)}" for k, v in node.inputs.items()]
        reads += [f"{k} model={_ref(v)}" for k, v in node.models.items()]
        lines.append(f"      reads:  {', '.join(reads) or '-'}")
        lines.append(f"      writes: <run>/{node.output}")
    return lines


def describe_plan(resource: SynPORun | SynPOSchedule) -> str:
    namespace = resource.metadata.namespace or "default"
    if isinstance(resource, SynPOSchedule):
        spec = resource.spec
        head = [
            f"SynPOSchedule {namespace}/{resource.metadata.name}: schedule '{spec.schedule}' "
            f"({spec.time_zone or 'UTC'}), concurrencyPolicy {spec.concurrency_policy}, "
            f"continual mode {'on' if spec.promotion.enabled else 'off'}",
            "each run:",
        ]
        body = describe_spec(spec.run_template.spec, f"{resource.metadata.name}-<minutes>", namespace)
        return "\n".join(head + ["  " + line if line else line for line in body])
    head = [f"SynPORun {namespace}/{resource.metadata.name}: valid"]
    return "\n".join(head + describe_spec(resource.spec, resource.metadata.name, namespace))
