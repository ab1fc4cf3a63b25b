"""Scorers and judges, shared by the filter stages (improver, pairs) and the evaluation.

- `Scorer.score(prompts, responses, references=None) -> list[float]`: a pointwise score per response.
  similarity: cosine of all-MiniLM-L6-v2 embeddings — to the reference when one is given, otherwise to the
  prompt (relevance: the reference-free score used to filter pairs and improver examples, where the gold or
  refined answer must beat the model's answer by the margin).
  rewardModel: the reward a sequence-classification checkpoint documents (reward_model.py; checkpoints whose
  head would be random, and pairwise rankers, are refused).
- `PairwiseScorer.margins(prompts, a, b) -> list[float]`: how strongly a beats b (> 0: a). pairRM (pairrm.py),
  for the filters. `margins()` below is the one rule the filters use for both kinds: score(a) − score(b) for a
  pointwise scorer, the scorer's own margin for a pairwise one.
- openai: a pairwise judge only (`PairwiseJudge.prefer`), for evaluation.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..errors import ConfigError


class Scorer(Protocol):
    def score(self, prompts: list[str], responses: list[str], references: list[str | None] | None = None
              ) -> list[float]: ...


class PairwiseScorer(Protocol):
    def margins(self, prompts: list[str], a: list[str], b: list[str]) -> list[float]: ...


def margins(scorer: Scorer | PairwiseScorer, prompts: list[str], a: list[str], b: list[str]
            ) -> tuple[list[float], list[float] | None, list[float] | None]:
    """(margin of a over b, a's scores, b's scores) per prompt; the scores are None for a pairwise scorer,
    which gives none."""
    if not prompts:
        return [], [], []
    if hasattr(scorer, "margins"):
        return scorer.margins(prompts, a, b), None, None
    sa, sb = scorer.score(prompts, a), scorer.score(prompts, b)
    return [x - y for x, y in zip(sa, sb, strict=True)], sa, sb


def scorer_field(spec: dict[str, Any]) -> str:
    return str(spec.get("type", "similarity"))


def make_scorer(spec: dict[str, Any], field: str = "spec.filter.scorer") -> Scorer | PairwiseScorer:
    """A pointwise (or, for pairRM, pairwise) scorer from a ScorerSpec (camelCase dict)."""
    kind = scorer_field(spec)
    if kind == "similarity":
        from .similarity import SimilarityScorer

        return SimilarityScorer(spec.get("model"))
    if kind == "rewardModel":
        from .reward_model import RewardModelScorer

        if not spec.get("model"):
            raise ConfigError(f"{field}.model: a rewardModel scorer needs a sequence-classification checkpoint")
        return RewardModelScorer(spec["model"], trust_remote_code=bool(spec.get("trustRemoteCode")), field=field)
    if kind == "pairRM":
        if field.startswith("spec.evaluation"):
            raise ConfigError(f"{field}.type: pairRM is a pairwise ranker for the filters (spec.filter.scorer); "
                              "as an evaluation judge it is not supported")
        from .pairrm import PairRMScorer

        return PairRMScorer(spec.get("model"), field=field)
    if kind == "openai":
        raise ConfigError(f"{field}.type: openai is a pairwise judge for evaluation only; "
                          "use rewardModel or similarity to filter")
    raise ConfigError(f"{field}.type: unknown scorer {kind!r}")
