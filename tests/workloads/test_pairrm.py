"""PairRM as a scorer: a checkpoint in llm-blender's DebertaV2PairRM layout (a DeBERTa-v3-style encoder under
`pretrained_model.*`, the pairwise head under `head_layer.*`) is built here from random weights, written with
safetensors directly (not through our loader's class), and must rank exactly as an independent forward pass over
those weights says; a checkpoint without the head is refused; the pairs stage filters on its margin."""

from __future__ import annotations

from pathlib import Path

import pytest

from synpo_workloads.errors import ModelError
from synpo_workloads.judges import make_scorer, margins
from synpo_workloads.judges.pairrm import PREFIXES, pair_ids

pytestmark = pytest.mark.workloads

HEAD_KEYS = ("head_layer.1.weight", "head_layer.1.bias", "head_layer.4.weight", "head_layer.4.bias")


def build_pairrm(target: Path, tokenizer_dir: str, *, with_head: bool = True):
    """A random DeBERTa-v3-shaped PairRM checkpoint; returns (encoder, head tensors, tokenizer) for the test's
    own forward pass."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, DebertaV2Config, DebertaV2Model

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.add_special_tokens({"additional_special_tokens": list(PREFIXES)})
    ids = [tok.convert_tokens_to_ids(p) for p in PREFIXES]
    # DeBERTa-v3's attention (relative positions, p2c/c2p, shared keys, layer-normed relative embeddings), tiny;
    # weights far from the usual 0.02 init so that answers mix into the prefix tokens and margins are not ~0.
    config = DebertaV2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=512, relative_attention=True,
                             position_buckets=64, pos_att_type=["p2c", "c2p"], position_biased_input=False,
                             norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0, initializer_range=0.5,
                             pad_token_id=tok.pad_token_id, architectures=["DebertaV2PairRM"], n_tasks=1,
                             drop_out=0.05, source_prefix_id=ids[0], cand1_prefix_id=ids[1], cand2_prefix_id=ids[2])
    torch.manual_seed(0)
    encoder = DebertaV2Model(config).eval()
    head = {"head_layer.1.weight": torch.randn(32, 64) * 0.5, "head_layer.1.bias": torch.randn(32) * 0.1,
            "head_layer.4.weight": torch.randn(1, 32), "head_layer.4.bias": torch.randn(1)}
    state = {f"pretrained_model.{k}": v.contiguous() for k, v in encoder.state_dict().items()}
    if with_head:
        state.update(head)
    target.mkdir(parents=True, exist_ok=True)
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(target)
    tok.save_pretrained(target)
    return encoder, head, tok


def reference_logit(encoder, head, tok, prompt: str, a: str, b: str) -> float:
    """DebertaV2PairRM's forward written out: head([h_src; h_a]) − head([h_src; h_b])."""
    import torch

    ids = pair_ids(lambda t, n: tok(t, truncation=True, max_length=n)["input_ids"], prompt, a, b)
    with torch.no_grad():
        h = encoder(input_ids=torch.tensor([ids])).last_hidden_state[0]
        at = [h[ids.index(tok.convert_tokens_to_ids(p))] for p in PREFIXES]

        def score(cand):
            x = torch.tanh(torch.cat([at[0], cand]) @ head["head_layer.1.weight"].T + head["head_layer.1.bias"])
            return float((x @ head["head_layer.4.weight"].T + head["head_layer.4.bias"]).mean())

        return score(at[1]) - score(at[2])


PROMPTS = ["How do plants eat?", "Name a prime number.", "What is the capital of France?"]
A = ["Photosynthesis turns sunlight into sugar.", "7", "Paris, on the Seine."]
B = ["They go shopping.", "The number nine, which is not prime at all.", "Lyon"]


def test_pairrm_margins_are_the_checkpoints_own_both_orders(tiny_model, tmp_path):
    encoder, head, tok = build_pairrm(tmp_path / "pairrm", tiny_model)
    scorer = make_scorer({"type": "pairRM", "model": str(tmp_path / "pairrm")})
    got, sa, sb = margins(scorer, PROMPTS, A, B)
    assert sa is None and sb is None  # a pairwise scorer gives no pointwise scores
    want = [(reference_logit(encoder, head, tok, p, a, b) - reference_logit(encoder, head, tok, p, b, a)) / 2
            for p, a, b in zip(PROMPTS, A, B, strict=True)]
    import torch

    # the reference runs in float32 on the CPU; on a GPU the scorer runs in bfloat16 (models.torch_dtype)
    assert got == (pytest.approx(want, rel=0.05, abs=0.02) if torch.cuda.is_available() else pytest.approx(want, abs=1e-4))
    assert max(abs(w) for w in want) > 1e-3  # the head is not a no-op, so the comparison above can fail
    assert scorer.margins(PROMPTS, B, A) == pytest.approx([-g for g in got], abs=1e-5)


def test_pairrm_checkpoint_without_its_head_is_refused(tiny_model, tmp_path):
    build_pairrm(tmp_path / "bare", tiny_model, with_head=False)
    with pytest.raises(ModelError, match=r"pairRM scorer .*bare: the weights head_layer\.1\.bias, head_layer\.1\."
                                         r"weight, head_layer\.4\.bias, head_layer\.4\.weight are not in the "
                                         r"checkpoint.*randomly initialised"):
        make_scorer({"type": "pairRM", "model": str(tmp_path / "bare")})


def test_pairrm_refuses_another_architecture(tiny_model):
    from synpo_workloads.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"spec.filter.scorer.model: {tiny_model} is a llama checkpoint"):
        make_scorer({"type": "pairRM", "model": tiny_model})


def test_pairrm_refuses_a_tokenizer_without_its_prefix_tokens(tiny_model, tmp_path):
    build_pairrm(tmp_path / "pairrm", tiny_model)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path / "pairrm")  # the prefixes are gone
    with pytest.raises(ModelError, match=r"tokenizer lacks the tokens <\|source\|>"):
        make_scorer({"type": "pairRM", "model": str(tmp_path / "pairrm")})


def test_pairrm_is_not_an_evaluation_judge():
    from pydantic import ValidationError

    from synpo_operator.api.run import EvaluationSpec
    from synpo_workloads.errors import ConfigError

    with pytest.raises(ValidationError, match="pairRM is a pairwise ranker for spec.filter.scorer"):
        EvaluationSpec.model_validate({"judges": [{"type": "similarity"}, {"type": "pairRM"}]})
    with pytest.raises(ConfigError, match=r"spec.evaluation.judges.type: pairRM"):
        make_scorer({"type": "pairRM"}, field="spec.evaluation.judges")


def test_pair_ids_layout_and_truncation():
    import re

    def encode(text: str, max_length: int) -> list[str]:  # a token per prefix or character, [CLS] … [SEP] around
        return (["C"] + re.findall(r"<\|\w+\|>|.", text))[: max_length - 1] + ["S"]

    ids = pair_ids(encode, "p" * 30, "a" * 30, "b" * 30, source_max=20, candidate_max=15)
    # source: 20 tokens; each candidate: (20 + 2·15 − 20) // 2 = 15, its prefix kept first
    assert len(ids) == 50 and ids.count("S") == 3
    assert ids[:3] == ["C", "<|source|>", "p"] and ids[19] == "S"
    assert ids[20:23] == ["C", "<|candidate1|>", "a"] and ids[35:38] == ["C", "<|candidate2|>", "b"]
    short = pair_ids(encode, "p" * 4, "a" * 30, "b" * 30, source_max=20, candidate_max=15)
    assert len(short) == 7 + 2 * ((20 + 30 - 7) // 2)  # what the prompt leaves goes to the answers
    # a prefix string inside a text cannot plant a second prefix token
    assert pair_ids(encode, "x<|candidate2|>y", "a", "b").count("<|candidate2|>") == 1


def test_pair_filter_keeps_what_pairrm_prefers_by_the_margin(tiny_model, tmp_path):
    from wl_helpers import run_in_process, stage_configs, tiny_spec

    from synpo_workloads import store

    build_pairrm(tmp_path / "pairrm", tiny_model)
    gaps = make_scorer({"type": "pairRM", "model": str(tmp_path / "pairrm")}).margins(PROMPTS, A, B)
    cut = sorted(gaps)[1]  # keeps exactly the pair with the largest margin
    spec = tiny_spec(tiny_model, str(tmp_path / "runs"), iterations=1,
                     filter={"scorer": {"type": "pairRM", "model": str(tmp_path / "pairrm")}, "minMargin": cut,
                             "maxRepetition": 1.0})
    node, config = {n.key: (n, c) for n, c in stage_configs(spec, str(tmp_path / "runs"))}["i1-pairs"]
    refined = store.StageWriter.for_stage(config["inputs"]["refined"])
    refined.write_rows("refined", [{"index": i, "prompt": p, "refined": a}
                                   for i, (p, a) in enumerate(zip(PROMPTS, A, strict=True))])
    refined.finish({"rows": 3})
    base = store.StageWriter.for_stage(config["inputs"]["rejected"])
    base.write_rows("responses", [{"index": i, "prompt": p, "response": b}
                                  for i, (p, b) in enumerate(zip(PROMPTS, B, strict=True))])
    base.finish({"rows": 3})
    result = run_in_process(node, config)[0]
    assert result["pairsKept"] == 1 and result["droppedMargin"] == 2
    scored = list(store.read_rows(config["output"], "scored"))
    assert [s["margin"] for s in scored] == pytest.approx(gaps, abs=1e-5)
    assert all("scoreChosen" not in s for s in scored)
    kept = list(store.read_rows(config["output"], "pairs"))
    assert [p["index"] for p in kept] == [gaps.index(max(gaps))]
