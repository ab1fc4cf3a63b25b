"""Reward-model scorer: any AutoModelForSequenceClassification checkpoint; the score is its first logit
on the (prompt, response) chat rendered with the reward model's own chat template (or plain text)."""

from __future__ import annotations

from .. import models


class RewardModelScorer:
    def __init__(self, model_ref: str, batch_size: int = 8, max_length: int = 4096):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = models.resolve(model_ref)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=models.torch_dtype())
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(models.device()).eval()
        self.batch_size = batch_size
        self.max_length = max_length

    def _text(self, prompt: str, response: str) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False)
        return f"{prompt}\n\n{response}"

    def score(self, prompts: list[str], responses: list[str], references: list[str | None] | None = None
              ) -> list[float]:
        import torch

        texts = [self._text(p, r) for p, r in zip(prompts, responses, strict=True)]
        scores: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i:i + self.batch_size], return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.max_length, add_special_tokens=False).to(self.model.device)
            with torch.inference_mode():
                logits = self.model(**enc).logits
            scores.extend(float(x) for x in logits[:, 0].float().cpu())
        return scores
