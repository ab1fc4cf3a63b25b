"""The transformers engine: batched `generate` with left padding, prompts sorted by length to cut padding.

On a GPU it uses a static KV cache (transformers then compiles the decoding step); on CPU the dynamic cache,
since compiling costs more than it saves for short CPU runs.
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
        lengths = [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: lengths[i], reverse=True)
        outputs: list[str] = [""] * len(texts)
        device = self.model.device
        gen_kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            do_sample=params.temperature > 0,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if params.temperature > 0:
            gen_kwargs.update(temperature=params.temperature, top_p=params.top_p)
        if params.stop:
            gen_kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        if device.type == "cuda":
            gen_kwargs["cache_implementation"] = "static"
        torch.manual_seed(params.seed)
        progress.report(0, len(order), "prompts", force=True)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            enc = self.tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(device)
            with torch.inference_mode():
                out = self.model.generate(**enc, **gen_kwargs)
            new = out[:, enc["input_ids"].shape[1]:]
            for i, ids in zip(idx, new, strict=True):
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                outputs[i] = cut_at_stop(text, params.stop).strip() if params.stop else text.strip()
            progress.report(min(start + self.batch_size, len(order)), len(order), "prompts")
        return outputs

    def close(self) -> None:
        import gc

        import torch

        del self.model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
