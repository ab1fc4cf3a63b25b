"""Reward models are what they say: a custom-code RM (auto_map, like ArmoRM) loads with trustRemoteCode and ranks
as its weights say; a checkpoint without a reward head, a custom RM without trustRemoteCode and a pairwise ranker
are refused with the model named. The checkpoints are built here, with a real tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synpo_workloads.errors import ConfigError, ModelError
from synpo_workloads.judges import make_scorer

pytestmark = pytest.mark.workloads

# The checkpoint's own code, written next to its weights as ArmoRM ships modeling_custom.py. The reward is the
# mean over the sequence of a learned per-token value: its weights say which tokens are good.
MODELING = '''
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput


class TokenValueConfig(PretrainedConfig):
    model_type = "token-value-rm"

    def __init__(self, vocab_size=8, output_kind="score", **kw):
        self.vocab_size = vocab_size
        self.output_kind = output_kind
        super().__init__(**kw)


@dataclass
class RewardOutput(ModelOutput):
    score: torch.FloatTensor | None = None
    rewards: torch.FloatTensor | None = None


@dataclass
class LogitsOutput(ModelOutput):
    logits: torch.FloatTensor | None = None


class TokenValueRM(PreTrainedModel):
    config_class = TokenValueConfig

    def __init__(self, config):
        super().__init__(config)
        self.value = torch.nn.Embedding(config.vocab_size, 1)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, **kw):
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        per_token = self.value(input_ids)[..., 0] * mask
        reward = per_token.sum(-1) / mask.sum(-1)
        if self.config.output_kind == "score":   # ArmoRM: a `score` field of shape (batch, 1)
            return RewardOutput(score=reward[:, None], rewards=torch.stack([reward, -reward], -1))
        return LogitsOutput(logits=reward)       # 1-D logits
'''


def build_custom_rm(target: Path, tokenizer_dir: str, output_kind: str, good: str) -> Path:
    """A TokenValueRM whose weights value the tokens of `good` at +1 and every other token at 0."""
    import importlib.util
    import sys

    import torch
    from transformers import AutoTokenizer

    target.mkdir(parents=True, exist_ok=True)
    (target / "modeling_token_value.py").write_text(MODELING)
    spec = importlib.util.spec_from_file_location(f"tv_{output_kind}", target / "modeling_token_value.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = mod.TokenValueRM(mod.TokenValueConfig(vocab_size=len(tok), output_kind=output_kind))
    with torch.no_grad():
        model.value.weight.zero_()
        for t in tok(good, add_special_tokens=False)["input_ids"]:
            model.value.weight[t, 0] = 1.0
    model.save_pretrained(target)
    tok.save_pretrained(target)
    cfg = json.loads((target / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "modeling_token_value.TokenValueConfig",
                       "AutoModelForSequenceClassification": "modeling_token_value.TokenValueRM"}
    cfg["architectures"] = ["TokenValueRM"]
    (target / "config.json").write_text(json.dumps(cfg))
    return target


@pytest.mark.parametrize("output_kind", ["score", "logits"])
def test_custom_code_reward_model_ranks_as_its_weights_say(tiny_model, tmp_path, output_kind):
    rm = build_custom_rm(tmp_path / "rm", tiny_model, output_kind, good=" photosynthesis sunlight")
    scorer = make_scorer({"type": "rewardModel", "model": str(rm), "trustRemoteCode": True})
    prompts = ["How do plants eat?"] * 3
    good, mixed, bad = scorer.score(prompts, ["photosynthesis sunlight photosynthesis sunlight",
                                              "photosynthesis and the weather", "the stock market closed higher"])
    assert good > mixed > bad


def test_custom_code_reward_model_needs_trust_remote_code(tiny_model, tmp_path):
    rm = build_custom_rm(tmp_path / "rm", tiny_model, "score", good=" good")
    with pytest.raises(ConfigError, match=r"spec.filter.scorer.trustRemoteCode.*" + str(rm)):
        make_scorer({"type": "rewardModel", "model": str(rm)})


def test_causal_lm_without_reward_head_is_refused(tiny_model):
    with pytest.raises(ModelError, match=rf"reward model {tiny_model}: the weights score.weight .*randomly"):
        make_scorer({"type": "rewardModel", "model": tiny_model})


def test_sequence_classifier_with_its_head_loads(tiny_model, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig.from_pretrained(tiny_model)
    config.num_labels = 1
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path)
    scores = make_scorer({"type": "rewardModel", "model": str(tmp_path)}).score(["q"] * 2, ["a", "b c"])
    assert len(scores) == 2 and scores[0] != scores[1]


def test_pairwise_ranker_is_refused(tiny_model, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig.from_pretrained(tiny_model)
    config.num_labels = 1
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["architectures"] = ["DebertaV2PairRM"]  # llm-blender/PairRM's config names this class
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="pairwise ranker"):
        make_scorer({"type": "rewardModel", "model": str(tmp_path)})


def test_pair_filter_scores_with_the_custom_reward_model(tiny_model, tmp_path):
    """The pairs stage keeps exactly the pairs whose chosen side the custom RM rewards by more than the margin."""
    from wl_helpers import run_in_process, stage_configs, tiny_spec

    from synpo_workloads import store

    rm = build_custom_rm(tmp_path / "rm", tiny_model, "score", good=" photosynthesis")
    spec = tiny_spec(tiny_model, str(tmp_path / "runs"), iterations=1,
                     filter={"scorer": {"type": "rewardModel", "model": str(rm), "trustRemoteCode": True},
                             "minMargin": 0.1, "maxRepetition": 1.0})
    configs = {n.key: (n, c) for n, c in stage_configs(spec, str(tmp_path / "runs"))}
    node, config = configs["i1-pairs"]
    chosen = ["photosynthesis feeds plants", "the market closed", "photosynthesis photosynthesis"]
    rejected = ["the market closed higher", "photosynthesis feeds plants", "plants are green"]
    refined = store.StageWriter.for_stage(config["inputs"]["refined"])
    refined.write_rows("refined", [{"index": i, "prompt": "How do plants eat?", "refined": c}
                                   for i, c in enumerate(chosen)])
    refined.finish({"rows": 3})
    base = store.StageWriter.for_stage(config["inputs"]["rejected"])
    base.write_rows("responses", [{"index": i, "prompt": "How do plants eat?", "response": r}
                                  for i, r in enumerate(rejected)])
    base.finish({"rows": 3})
    result = run_in_process(node, config)[0]
    assert result["pairsKept"] == 2 and result["droppedMargin"] == 1
    kept = list(store.read_rows(config["output"], "pairs"))
    assert sorted(p["index"] for p in kept) == [0, 2]
    assert all(p["scoreChosen"] - p["scoreRejected"] > 0.1 for p in kept)
