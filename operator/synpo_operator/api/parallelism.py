"""Parallelism rules shared by the planner (plan/resources.py) and the stage programs' start-up checks (pure,
standard library only): vLLM tensor parallelism on a pod's GPUs, and a training stage's global batch across its
training processes."""

from __future__ import annotations


def tensor_parallel_size(gpus: int) -> int:
    """vLLM tensor-parallel size of an engine with `gpus` GPUs (on the CPU: 1)."""
    return max(1, gpus)


def tensor_parallel_problem(heads: int, gpus: int, field: str = "spec.resources.gpusPerPod") -> str | None:
    """Why vLLM cannot split a model with `heads` attention heads across `gpus` GPUs, or None."""
    size = tensor_parallel_size(gpus)
    if heads % size == 0:
        return None
    fits = [n for n in range(1, min(heads, 16) + 1) if heads % n == 0]
    return (f"{field}: vLLM splits the model's {heads} attention heads across the {size} GPUs of each "
            f"generation engine (tensor parallelism), so {heads} must divide by {size}; use one of "
            f"{', '.join(map(str, fits))}")


def global_batch_problem(batch_size: int, processes: int, field: str) -> str | None:
    """Why a global batch of `batch_size` examples cannot be split evenly across `processes` training processes
    (each takes batch_size / processes examples per optimizer step), or None."""
    if batch_size % processes == 0:
        return None
    lower = batch_size - batch_size % processes
    fits = ", ".join(map(str, [n for n in (lower, lower + processes) if n > 0]))
    return (f"{field}: the global batch of {batch_size} is split evenly across the {processes} training processes "
            f"(resources.training nodes x gpusPerNode), so it must be a multiple of {processes}; use e.g. {fits}, "
            f"or fewer processes")
