"""PairRM (llm-blender/PairRM-hf), the paper's Mistral scorer: a pairwise ranker, loaded by this small module
because llm-blender itself does not import beside transformers 5 (it reads transformers.utils.hub's
TRANSFORMERS_CACHE, which transformers 5 removed).

The architecture is llm-blender's DebertaV2PairRM, and a checkpoint of it loads here weight for weight:
- `pretrained_model.*`: a DeBERTa-v3 encoder over one sequence of three parts, each tokenised with the
  tokenizer's own special tokens: "<|source|>" + prompt, "<|candidate1|>" + answer a, "<|candidate2|>" + answer b.
  The prompt keeps at most SOURCE_MAX_TOKENS tokens; each answer half of what the prompt leaves of
  SOURCE_MAX_TOKENS + 2·CANDIDATE_MAX_TOKENS (PairRM's own limits, 1224 and 412).
- `head_layer.{1,4}`: dropout, Linear(2h → h), tanh, dropout, Linear(h → n_tasks), applied to
  [h_source; h_candidate] — the last hidden states at the prefix tokens — once per candidate.
  logit(a, b) = mean over tasks of head(source, a) − head(source, b); above 0 the ranker prefers a.

margin(a, b) = (logit(a, b) − logit(b, a)) / 2: both orders, averaged, as llm-blender's
compare(mode="[A,B]+[B,A]") does, so the answers' positions cancel and margin(a, b) = −margin(b, a). It is
what the filters compare with spec.filter.minMargin (paper: 0.20 for PairRM; which PairRM output the paper
thresholded it does not say — this logit scale is our reading).

A checkpoint whose head (or encoder) weights are missing is refused: it would rank with random weights.
"""

from __future__ import annotations

from typing import Any

from .. import models
from ..errors import ConfigError, ModelError

DEFAULT_MODEL = "llm-blender/PairRM-hf"
SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX = "<|source|>", "<|candidate1|>", "<|candidate2|>"
PREFIXES = (SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX)
CONFIG_IDS = ("source_prefix_id", "cand1_prefix_id", "cand2_prefix_id")
"""The config fields of llm-blender's PairRM-hf that name the prefix tokens' ids."""
SOURCE_MAX_TOKENS = 1224
CANDIDATE_MAX_TOKENS = 412


def pair_ids(encode, prompt: str, a: str, b: str, source_max: int = SOURCE_MAX_TOKENS,
             candidate_max: int = CANDIDATE_MAX_TOKENS) -> list[int]:
    """Token ids of "<|source|>prompt<|candidate1|>a<|candidate2|>b" under PairRM's limits. `encode(text,
    max_length)` tokenises with the tokenizer's special tokens, truncating on the right (so each prefix stays).
    Prefix strings inside the texts are removed: a second prefix token would be read as the candidate's."""
    def clean(text: str) -> str:
        for p in PREFIXES:
            text = text.replace(p, "")
        return text

    source = encode(SOURCE_PREFIX + clean(prompt), source_max)
    budget = (source_max + 2 * candidate_max - len(source)) // 2
    return source + encode(CAND1_PREFIX + clean(a), budget) + encode(CAND2_PREFIX + clean(b), budget)


def _model_class():
    """DebertaV2PairRM's layout as a transformers model (built lazily: torch and transformers import on use)."""
    from torch import nn
    from transformers.models.deberta_v2.modeling_deberta_v2 import DebertaV2Model, DebertaV2PreTrainedModel

    class PairRMModel(DebertaV2PreTrainedModel):
        base_model_prefix = "pretrained_model"  # a bare DeBERTa checkpoint then loads as the encoder, head missing

        def __init__(self, config):
            super().__init__(config)
            hidden = config.hidden_size
            dropout = float(getattr(config, "drop_out", 0.05))
            self.pretrained_model = DebertaV2Model(config)
            self.head_layer = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden, hidden), nn.Tanh(),
                                            nn.Dropout(dropout), nn.Linear(hidden, int(getattr(config, "n_tasks", 1))))
            self.post_init()

        def forward(self, input_ids, attention_mask, prefix_ids: tuple[int, int, int]):
            """logit(candidate1, candidate2) per row; each row holds each prefix token once."""
            import torch

            hidden = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            rows = torch.arange(input_ids.shape[0], device=input_ids.device)
            src, c1, c2 = (hidden[rows, (input_ids == t).int().argmax(dim=1)] for t in prefix_ids)
            left = self.head_layer(torch.cat([src, c1], dim=-1))
            right = self.head_layer(torch.cat([src, c2], dim=-1))
            return (left - right).mean(dim=-1)

    return PairRMModel


def _prefix_ids(tokenizer, config: Any, model_ref: str) -> tuple[int, int, int]:
    ids = tuple(tokenizer.convert_tokens_to_ids(p) for p in PREFIXES)
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ModelError(f"pairRM scorer {model_ref}: its tokenizer lacks the tokens {', '.join(PREFIXES)}; "
                         "is it a PairRM checkpoint (llm-blender/PairRM-hf)?")
    declared = tuple(getattr(config, k, None) for k in CONFIG_IDS)
    if all(d is not None for d in declared) and declared != ids:
        raise ModelError(f"pairRM scorer {model_ref}: config.json gives the prefix ids {declared}, its tokenizer "
                         f"{ids}; the checkpoint is inconsistent")
    return ids  # type: ignore[return-value]


class PairRMScorer:
    """A pairwise scorer: `margins(prompts, a, b)`; it has no pointwise `score`."""

    def __init__(self, model_ref: str | None = None, *, batch_size: int = 8, field: str = "spec.filter.scorer"):
        from transformers import AutoConfig, AutoTokenizer

        self.model_ref = model_ref or DEFAULT_MODEL
        path = models.resolve(self.model_ref)
        config = AutoConfig.from_pretrained(path)
        if getattr(config, "model_type", None) != "deberta-v2":
            raise ConfigError(f"{field}.model: {self.model_ref} is a {getattr(config, 'model_type', '?')} "
                              "checkpoint; a pairRM scorer needs PairRM's DeBERTa-v3 one (llm-blender/PairRM-hf)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        except (ImportError, ValueError) as e:
            raise ModelError(f"pairRM scorer {self.model_ref}: its tokenizer does not load ({e}); a checkpoint "
                             "that ships only spm.model needs the sentencepiece package") from e
        self.prefix_ids = _prefix_ids(self.tokenizer, config, self.model_ref)
        self.model, info = _model_class().from_pretrained(path, config=config, dtype=models.torch_dtype(),
                                                           output_loading_info=True)
        missing = sorted(set(info.get("missing_keys") or [])
                         | {str(m[0]) if isinstance(m, tuple | list) else str(m)
                            for m in info.get("mismatched_keys") or []})
        if missing:
            raise ModelError(f"pairRM scorer {self.model_ref}: the weights {', '.join(missing[:8])}"
                             f"{' …' if len(missing) > 8 else ''} are not in the checkpoint, so it would rank "
                             "with randomly initialised weights; refusing it. A PairRM checkpoint holds "
                             "pretrained_model.* (the DeBERTa encoder) and head_layer.* (the pairwise head)")
        self.model.to(models.device()).eval()
        self.batch_size = batch_size

    def _encode(self, text: str, max_length: int) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]

    def _logits(self, rows: list[list[int]]) -> list[float]:
        import torch

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out: list[float] = []
        for i in range(0, len(rows), self.batch_size):
            batch = rows[i:i + self.batch_size]
            width = max(len(r) for r in batch)
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in batch], device=self.model.device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch], device=self.model.device)
            with torch.inference_mode():
                out.extend(float(x) for x in self.model(ids, mask, self.prefix_ids).float().cpu())
        return out

    def margins(self, prompts: list[str], a: list[str], b: list[str]) -> list[float]:
        """Per prompt, how strongly PairRM prefers a over b (> 0: a), both orders averaged."""
        forward = [pair_ids(self._encode, p, x, y) for p, x, y in zip(prompts, a, b, strict=True)]
        swapped = [pair_ids(self._encode, p, y, x) for p, x, y in zip(prompts, a, b, strict=True)]
        logits = self._logits(forward + swapped)
        n = len(forward)
        return [(ab - ba) / 2 for ab, ba in zip(logits[:n], logits[n:], strict=True)]
