"""vLLM tensor parallelism on a pod's GPUs: the rule shared by the planner (plan/resources.py) and the vLLM
engine's start-up check (pure, standard library only)."""

from __future__ import annotations


def tensor_parallel_size(gpus: int) -> int:
    """vLLM tensor-parallel size on a pod with `gpus` GPUs (a CPU pod: 1)."""
    return max(1, gpus)


def tensor_parallel_problem(heads: int, gpus: int, field: str = "spec.resources.gpusPerPod") -> str | None:
    """Why vLLM cannot split a model with `heads` attention heads across `gpus` GPUs, or None."""
    size = tensor_parallel_size(gpus)
    if heads % size == 0:
        return None
    fits = [n for n in range(1, min(heads, 16) + 1) if heads % n == 0]
    return (f"{field}: vLLM splits the model's {heads} attention heads across the {size} GPUs of each "
            f"generation pod (tensor parallelism), so {heads} must divide by {size}; use one of "
            f"{', '.join(map(str, fits))}")
