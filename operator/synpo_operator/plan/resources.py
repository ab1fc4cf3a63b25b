"""What each stage pod gets, and the one rule that ties vLLM's tensor parallelism to it (pure).

A generation stage (prompts, responses, refine, evaluate) runs vLLM with tensor_parallel_size = the GPUs its pod
gets, so every GPU of the pod holds a slice of the model. vLLM splits attention heads across GPUs, so the
model's head count must divide by that number: `tensor_parallel_problems` says so at plan time when the model's
config is readable, and the vLLM engine checks it again at stage start (a bad-input exit) when it is not.
"""

from __future__ import annotations

from ..api.parallelism import tensor_parallel_problem
from ..api.run import SynPORunSpec
from .graph import StageNode, stage_graph


def gpus_for(spec: SynPORunSpec, node: StageNode) -> int:
    """GPUs requested by each pod of this stage (0: a CPU pod)."""
    return spec.resources.gpus_per_pod if node.gpu else 0


GENERATION_STAGES = ("prompts", "base-responses", "responses", "refine", "evaluate")
"""Stages that generate with spec.generation.engine."""


def generation_gpus(spec: SynPORunSpec) -> int:
    """The most GPUs a generation stage's pod gets (what vLLM's tensor parallelism spans)."""
    return max(gpus_for(spec, node) for node in stage_graph(spec) if node.id.name in GENERATION_STAGES)


def tensor_parallel_problems(spec: SynPORunSpec, heads: int | None) -> list[str]:
    """Plan-time check of the generation stages' tensor parallelism; `heads` None: the model's config is not
    readable here (a hub id, object storage) and the stage checks it when it starts."""
    if spec.generation.engine != "vllm" or heads is None:
        return []
    problem = tensor_parallel_problem(heads, generation_gpus(spec))
    return [problem] if problem else []
