"""The train stage's reward accuracy and margin (TRL's rewards/accuracies and rewards/margins, on the trained
model): they show whether preference training learned its pairs, on them and on held-out pairs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.workloads


def _pairs(prompts: range) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"question {i}: how do plants grow?"}],
             "chosen": [{"role": "assistant", "content": "plants use sunlight and water to grow"}],
             "rejected": [{"role": "assistant", "content": "the stock market closed higher"}]} for i in prompts]


@pytest.mark.parametrize("loss,beta", [("simpo", 2.0), ("dpo", 0.5)])
def test_training_that_learns_its_pairs_shows_it(tiny_model, tmp_path, loss, beta):
    from synpo_workloads import training

    section = SimpleNamespace(loss=loss, beta=beta, gamma=0.5, learning_rate=5e-3, epochs=4.0, batch_size=4,
                              micro_batch_size=4, warmup_ratio=0.0, max_length=128, gradient_checkpointing=False)
    stats = training.preference(tiny_model, _pairs(range(8)), section, model_dir=str(tmp_path / "model"),
                                checkpoints=str(tmp_path / "ckpt"), seed=0, dtype="float32",
                                held_out=_pairs(range(100, 104)))
    # one chosen/rejected pattern, learned: every pair ranked right, by a positive margin, held-out ones too
    assert stats["rewardAccuracy"] == 1.0 and stats["rewardMargin"] > 0
    assert stats["heldOutRewardAccuracy"] == 1.0 and stats["heldOutRewardMargin"] > 0
