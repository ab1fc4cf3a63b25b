"""The transformers engine: batched `generate` with left padding, prompts sorted by length to cut padding.

On a GPU it uses a static KV cache (transformers then compiles the decoding step); on CPU the dynamic cache,
since compiling costs more than it saves for short CPU runs.

Speed (bench/generation.py, docs/benchmarks.md#generation): prompts are tokenised once (the length sort and
the batches reuse the ids); top-k/top-p sampling uses one fused `topk` + nucleus filter
(`engines/sampling.py`, the same kept tokens as transformers' TopK → TopP warpers) instead of a full-vocabulary
sort per step. `last_stats` holds the generated-token count of the last call (up to and including EOS).
"""

from __future__ import annotations

from .. import models, progress
from . import Prompt, SamplingParams, cut_at_stop


class TransformersEngine:
    def __init__(self, model_ref: str, *, dtype: str = "auto", batch_size: int = 64, model=None, tokenizer=None):
        self.tokenizer = tokenizer or models.load_tokenizer(model_ref, padding_side="left")
        self.model = model or models.load_causal_lm(model_ref, dtype)
        self.model.eval()
        self.batch_size = batch_size
        self.fast_sampling = True
        self.last_stats: dict = {}

    def render(self, prompt: Prompt, prefill: str = "") -> str:
        if isinstance(prompt, str):
            return prompt + prefill
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        else:  # no template: plain "role: content" lines
            text = "\n".join(f"{m['role']}: {m['content']}" for m in prompt) + "\nassistant: "
        return text + prefill

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[str]:
        import torch

        from .sampling import make_processor

        texts = [self.render(p, params.prefill) for p in prompts]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]  # tokenised once
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]), reverse=True)
        outputs: list[str] = [""] * len(texts)
        device = self.model.device
        gen_kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            do_sample=params.temperature > 0,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if params.temperature > 0:
            gen_kwargs.update(temperature=params.temperature, top_p=params.top_p)
            if self.fast_sampling:
                # transformers' effective top_k (its default is 50 when the checkpoint sets none)
                top_k = self.model.generation_config.top_k
                top_k = 50 if top_k is None else top_k
                gen_kwargs.update(top_k=0, top_p=1.0, logits_processor=[make_processor(params.top_p, top_k)])
        if params.stop:
            gen_kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        if device.type == "cuda":
            gen_kwargs["cache_implementation"] = "static"
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        eos.add(self.tokenizer.eos_token_id)
        new_tokens = 0
        torch.manual_seed(params.seed)
        progress.report(0, len(order), "prompts", force=True)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            enc = self.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt").to(device)
            with torch.inference_mode():
                out = self.model.generate(**enc, **gen_kwargs)
            new = out[:, enc["input_ids"].shape[1]:].tolist()
            for i, row in zip(idx, new, strict=True):
                n = generated_length(row, eos, self.tokenizer.pad_token_id)
                new_tokens += n
                text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
                outputs[i] = cut_at_stop(text, params.stop).strip() if params.stop else text.strip()
            progress.report(min(start + self.batch_size, len(order)), len(order), "prompts")
        self.last_stats = {"prompts": len(texts), "new_tokens": new_tokens}
        return outputs

    def close(self) -> None:
        import gc

        import torch

        del self.model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def generated_length(row: list[int], eos: set[int], pad: int | None) -> int:
    """Tokens generate() really produced for a row: up to and including the first EOS; a row stopped by a
    stop string is padded with pad (not counted) when pad is not an EOS id."""
    for n, tok in enumerate(row):
        if tok in eos:
            return n + 1
        if pad is not None and tok == pad:
            return n
    return len(row)
