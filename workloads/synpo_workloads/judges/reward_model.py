"""Reward-model scorer: a sequence-classification checkpoint loaded as its own architecture.

- `trustRemoteCode: true` runs the Python code the checkpoint ships (its `auto_map`), as ArmoRM
  (`LlamaForRewardModelWithGating`) needs; without it such a checkpoint is refused, never loaded as a generic
  class with a fresh head.
- The reward is read from the output the model documents (`reward_from_output`): a `score` field
  (multi-objective RMs such as ArmoRM), 1-D logits, or 2-D logits with one label.
- A checkpoint whose head would be initialised at random (missing or resized weights: a causal LM, a base model,
  a checkpoint of another architecture) is refused with the model and the missing weights named.
- Pairwise rankers (PairRM: llm-blender's `DebertaV2PairRM`) compare two answers and give no pointwise reward;
  they are refused here with a message naming the scorer that loads them (`type: pairRM`, pairrm.py).

The chat (prompt, response) is rendered with the reward model's own chat template (or as plain text).
"""

from __future__ import annotations

from typing import Any

from .. import models
from ..errors import ConfigError, ModelError

PAIRWISE_ARCHITECTURES = ("PairRM",)
"""Substrings of `config.architectures` that mark a pairwise ranker."""


def reward_from_output(output: Any, model_ref: str) -> Any:
    """The per-example reward (1-D tensor) from a model's forward output. Pure (no loading)."""
    score = getattr(output, "score", None) if not isinstance(output, dict) else output.get("score")
    value = score if score is not None else getattr(output, "logits", None)
    if value is None and isinstance(output, dict):
        value = output.get("logits")
    if value is None:
        raise ModelError(f"reward model {model_ref}: its output has neither `score` nor `logits`")
    if value.dim() == 2 and value.shape[1] == 1:
        value = value[:, 0]
    if value.dim() != 1:
        raise ModelError(f"reward model {model_ref}: output of shape {tuple(value.shape)} is not one reward per "
                         "example (a multi-label classifier? num_labels must be 1, or the model must return `score`)")
    return value


def _refuse_pairwise(config: Any, model_ref: str, field: str) -> None:
    archs = [a for a in (getattr(config, "architectures", None) or []) if isinstance(a, str)]
    if any(p in a for a in archs for p in PAIRWISE_ARCHITECTURES):
        raise ConfigError(f"{field}.model: {model_ref} is a pairwise ranker ({', '.join(archs)}): it compares two "
                          "answers and gives no pointwise reward. Use type: pairRM for it (filters only), or a "
                          "pointwise reward model (e.g. RLHFlow/ArmoRM-Llama3-8B-v0.1 with trustRemoteCode: true) "
                          "or the similarity scorer")


class RewardModelScorer:
    def __init__(self, model_ref: str, *, trust_remote_code: bool = False, batch_size: int = 8,
                 max_length: int = 4096, field: str = "spec.filter.scorer"):
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        self.model_ref = model_ref
        path = models.resolve(model_ref)
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        except ValueError as e:
            if "trust_remote_code" in str(e):
                raise ConfigError(f"{field}.trustRemoteCode: reward model {model_ref} ships its own code "
                                  "(auto_map); set trustRemoteCode: true to run it (only for checkpoints you "
                                  "trust)") from e
            raise
        _refuse_pairwise(config, model_ref, field)
        custom = bool(getattr(config, "auto_map", None))
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        try:
            self.model, info = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=models.torch_dtype(), trust_remote_code=trust_remote_code, output_loading_info=True)
        except ValueError as e:
            if "trust_remote_code" in str(e) or (custom and not trust_remote_code):
                raise ConfigError(f"{field}.trustRemoteCode: reward model {model_ref} ships its own code "
                                  "(auto_map); set trustRemoteCode: true to run it") from e
            raise ModelError(f"reward model {model_ref}: not a sequence-classification checkpoint ({e})") from e
        missing = list(info.get("missing_keys") or [])
        resized = [str(m[0]) if isinstance(m, tuple | list) else str(m) for m in info.get("mismatched_keys") or []]
        if missing or resized:
            names = sorted(set(missing) | set(resized))
            hint = (" The checkpoint ships its own code (auto_map): set trustRemoteCode: true."
                    if custom and not trust_remote_code else
                    " Is it a causal LM or base model rather than a reward model?")
            raise ModelError(f"reward model {model_ref}: the weights {', '.join(names[:8])}"
                             f"{' …' if len(names) > 8 else ''} are not in the checkpoint, so "
                             f"{type(self.model).__name__} would score with a randomly initialised head; "
                             f"refusing it.{hint}")
        if getattr(self.model.config, "pad_token_id", None) is None:
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
                out = self.model(**enc)
            scores.extend(float(x) for x in reward_from_output(out, self.model_ref).float().cpu())
        return scores
