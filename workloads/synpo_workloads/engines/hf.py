"""The transformers engine: batched decoding with left padding, prompts sorted by length to cut padding.

Llama-architecture models (SmolLM2, Llama, Qwen2) decode through `decode.StaticDecoder`: a preallocated KV
cache and one decoding step without host syncs, captured in a CUDA graph on a GPU. Other models, and
`static_decoding = False`, use transformers' `generate` (on a GPU with its static cache).

Speed (bench/generation.py, docs/benchmarks.md#generation): prompts are tokenised once (the length sort and
the batches reuse the ids); top-k/top-p sampling uses one fused `topk` + nucleus filter
(`engines/sampling.py`, the same kept tokens as transformers' TopK → TopP warpers) instead of a full-vocabulary
sort per step. `last_stats` holds the generated-token count of the last call (up to and including EOS).

Prompts are the chat template's text tokenised without special tokens, as on vLLM; a template without a BOS
(Zephyr's) gets the tokenizer's from models.load_tokenizer (templates.with_bos), so each prompt has exactly one.
"""

from __future__ import annotations

import os

from .. import models, progress
from . import Prompt, SamplingParams, cut_at_stop


class TransformersEngine:
    def __init__(self, model_ref: str, *, dtype: str = "auto", batch_size: int = 64, model=None, tokenizer=None):
        self.tokenizer = tokenizer or models.load_tokenizer(model_ref, padding_side="left")
        self.model = model or models.load_causal_lm(model_ref, dtype)
        self.model.eval()
        self.batch_size = batch_size
        self.fast_sampling = True
        self.static_decoding = os.environ.get("SYNPO_STATIC_DECODING", "1") != "0"  # 0: transformers' generate
        self._decoder = None
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

        texts = [self.render(p, params.prefill) for p in prompts]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]  # tokenised once
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]), reverse=True)
        outputs: list[str] = [""] * len(texts)
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        eos.add(self.tokenizer.eos_token_id)
        # transformers' effective top_k (its default is 50 when the checkpoint sets none)
        top_k = self.model.generation_config.top_k
        top_k = 50 if top_k is None else top_k
        decode_batch = self._batch_decoder(params, eos, top_k)
        new_tokens = 0
        torch.manual_seed(params.seed)
        progress.report(0, len(order), "prompts", force=True)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            for i, row in zip(idx, decode_batch([ids[i] for i in idx]), strict=True):
                n = generated_length(row, eos, self.tokenizer.pad_token_id)
                new_tokens += n
                text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
                outputs[i] = cut_at_stop(text, params.stop).strip() if params.stop else text.strip()
            progress.report(min(start + self.batch_size, len(order)), len(order), "prompts")
        self.last_stats = {"prompts": len(texts), "new_tokens": new_tokens}
        return outputs

    def _batch_decoder(self, params: SamplingParams, eos: set[int], top_k: int):
        """rows of prompt ids -> rows of new ids: the static decoder, or transformers' generate."""
        import torch

        from . import decode
        from .sampling import make_processor, make_sampler

        device, pad = self.model.device, self.tokenizer.pad_token_id
        if self.static_decoding and decode.supports(self.model):
            sample = make_sampler(params.temperature, params.top_p, top_k)
            stops = list(params.stop or ())

            def stopped(_row: int, tokens: list[int]) -> int | None:
                return stop_prefix(tokens, lambda t: self.tokenizer.decode(t, skip_special_tokens=True), stops)

            def with_decoder(rows: list[list[int]]) -> list[list[int]]:
                need = -(-(max(map(len, rows)) + params.max_new_tokens) // 64) * 64  # slots, in steps of 64
                current = self._decoder
                batch = max(len(rows), self.batch_size)  # a last, smaller batch reuses the full-size cache
                if current is None or current.batch != batch or current.max_len < need:
                    self._decoder = None  # free the old cache first
                    current = self._decoder = decode.StaticDecoder(self.model, batch, need)
                return current.generate(rows, max_new=params.max_new_tokens, sample=sample, eos=sorted(eos),
                                        pad_id=pad, stopped=stopped if stops else None)

            return with_decoder

        gen_kwargs = dict(max_new_tokens=params.max_new_tokens, do_sample=params.temperature > 0, pad_token_id=pad)
        if params.temperature > 0:
            gen_kwargs.update(temperature=params.temperature, top_p=params.top_p)
            if self.fast_sampling:
                gen_kwargs.update(top_k=0, top_p=1.0, logits_processor=[make_processor(params.top_p, top_k)])
        if params.stop:
            gen_kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        if device.type == "cuda":
            gen_kwargs["cache_implementation"] = "static"

        def with_generate(rows: list[list[int]]) -> list[list[int]]:
            enc = self.tokenizer.pad({"input_ids": rows}, return_tensors="pt").to(device)
            with torch.inference_mode():
                out = self.model.generate(**enc, **gen_kwargs)
            return out[:, enc["input_ids"].shape[1]:].tolist()

        return with_generate

    def close(self) -> None:
        import gc

        import torch

        del self.model
        self._decoder = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def stop_prefix(tokens: list[int], decode, stops: list[str]) -> int | None:
    """Length of the shortest prefix of tokens whose text holds a stop string (None: none does yet), found
    by bisection (holding a stop string only becomes true as the prefix grows)."""
    def has_stop(n: int) -> bool:
        text = decode(tokens[:n])
        return any(stop in text for stop in stops)

    if not has_stop(len(tokens)):
        return None
    lo, hi = 1, len(tokens)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if has_stop(mid) else (mid + 1, hi)
    return lo


def generated_length(row: list[int], eos: set[int], pad: int | None) -> int:
    """Tokens generate() really produced for a row: up to and including the first EOS; a row stopped by a
    stop string is padded with pad (not counted) when pad is not an EOS id."""
    for n, tok in enumerate(row):
        if tok in eos:
            return n + 1
        if pad is not None and tok == pad:
            return n
    return len(row)
