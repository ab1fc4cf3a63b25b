"""Scorers and judges, shared by the filter stages (improver, pairs) and the evaluation.

- `Scorer.score(prompts, responses, references=None) -> list[float]`: a pointwise score per response.
  similarity: cosine of all-MiniLM-L6-v2 embeddings — to the reference when one is given, otherwise to the
  prompt (relevance: the reference-free score used to filter pairs and improver examples, where the gold or
  refined answer must beat the model's answer by the margin).
  rewardModel: the reward a sequence-classification checkpoint documents (reward_model.py; checkpoints whose
  head would be random, and pairwise rankers, are refused).
- openai: a pairwise judge only (`PairwiseJudge.prefer`), for evaluation.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..errors import ConfigError


class Scorer(Protocol):
    def score(self, prompts: list[str], responses: list[str], references: list[str | None] | None = None
              ) -> list[float]: ...


def scorer_field(spec: dict[str, Any]) -> str:
    return str(spec.get("type", "similarity"))


def make_scorer(spec: dict[str, Any], field: str = "spec.filter.scorer") -> Scorer:
    """A pointwise scorer from a ScorerSpec (camelCase dict)."""
    kind = scorer_field(spec)
    if kind == "similarity":
        from .similarity import SimilarityScorer

        return SimilarityScorer(spec.get("model"))
    if kind == "rewardModel":
        from .reward_model import RewardModelScorer

        if not spec.get("model"):
            raise ConfigError(f"{field}.model: a rewardModel scorer needs a sequence-classification checkpoint")
        return RewardModelScorer(spec["model"], trust_remote_code=bool(spec.get("trustRemoteCode")), field=field)
    if kind == "openai":
        raise ConfigError(f"{field}.type: openai is a pairwise judge for evaluation only; "
                          "use rewardModel or similarity to filter")
    raise ConfigError(f"{field}.type: unknown scorer {kind!r}")
