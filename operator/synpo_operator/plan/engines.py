"""How a generation pod's GPUs are split between engines (pure).

A generation stage (prompts, responses, refine, evaluate) runs gpus / tensor_parallel_size engines side by side
in its pod, each on tensor_parallel_size GPUs (vLLM tensor parallelism), the prompts split between them
(workloads engines/parallel.py), so every GPU of the pod is used and a model that fits on one GPU is not split
8 ways. vLLM splits attention heads across an engine's GPUs, so the model's head count must divide by that
size: `tensor_parallel_problems` says so at plan time when the model's config is readable, and the vLLM engine
checks it again at stage start (a bad-input exit) when it is not.
"""

from __future__ import annotations

from ..api.parallelism import tensor_parallel_problem
from ..api.run import SynPORunSpec
from .cache import model_bytes
from .resources import generation_gpus

WEIGHTS_PER_GPU = 40 * 10**9
"""bf16 weight bytes one engine GPU may hold when the default tensor-parallel size is chosen: half of an 80 GB
GPU, the rest for activations and the KV cache (vLLM's gpuMemoryUtilization 0.9)."""


def tensor_parallel_size(spec: SynPORunSpec, heads: int | None = None) -> int:
    """GPUs per generation engine: generation.tensorParallelSize, else the fewest (a divisor of the pod's GPUs,
    dividing `heads` when known) that hold the model's weights at WEIGHTS_PER_GPU each; all of the pod's GPUs
    when the model's size is unknown. 1 on a CPU pod."""
    gpus = generation_gpus(spec)
    if gpus == 0:
        return 1
    if spec.generation.tensor_parallel_size is not None:
        return spec.generation.tensor_parallel_size
    weights = model_bytes(spec.model.base)
    if weights is None:
        return gpus
    for size in range(1, gpus + 1):
        if gpus % size == 0 and (heads is None or heads % size == 0) and weights <= size * WEIGHTS_PER_GPU:
            return size
    return gpus


def tensor_parallel_problems(spec: SynPORunSpec, heads: int | None) -> list[str]:
    """Plan-time check of the generation engines' tensor parallelism; `heads` None: the model's config is not
    readable here (a hub id, object storage) and the stage checks it when it starts."""
    if spec.generation.engine != "vllm" or heads is None:
        return []
    if spec.generation.tensor_parallel_size is not None:
        field = "spec.generation.tensorParallelSize"
    else:
        field = ("spec.resources.generation.gpusPerPod" if spec.resources.generation.gpus_per_pod is not None
                 else "spec.resources.gpusPerPod")
    problem = tensor_parallel_problem(heads, tensor_parallel_size(spec, heads), field)
    return [problem] if problem else []
