"""The transformers engine's fast paths keep generate()'s semantics: the fused top-k/top-p filter keeps the
same tokens as transformers' TopK → TopP warpers, so seeded outputs are identical to the stock path."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("top_k", [50, None])
@pytest.mark.parametrize("top_p", [0.5, 0.95, 1.0])
def test_filter_matches_transformers_warpers(top_k, top_p):
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    from synpo_workloads.engines.sampling import filter_scores

    gen = torch.Generator().manual_seed(0)
    # peaked rows (a few dominant tokens) and flat rows (the 0.95 nucleus needs thousands of tokens)
    scores = torch.cat([torch.randn(8, 3000, generator=gen) * 6, torch.randn(8, 3000, generator=gen) * 0.1])
    ref = scores
    if top_k:
        ref = TopKLogitsWarper(top_k)(None, ref)
    if top_p < 1.0:
        ref = TopPLogitsWarper(top_p)(None, ref)
    out = filter_scores(scores, top_p, top_k, candidates=256)
    assert torch.equal(torch.isinf(out), torch.isinf(ref))
    assert torch.equal(out[~torch.isinf(out)], ref[~torch.isinf(ref)])


def test_generated_length_counts_up_to_eos():
    from synpo_workloads.engines.hf import generated_length

    assert generated_length([5, 6, 2, 2, 2], {2}, 2) == 3
    assert generated_length([5, 6, 7], {2}, 2) == 3
    assert generated_length([5, 6, 0, 0], {2}, 0) == 2  # stopped by a stop string, padded


def test_fast_sampling_outputs_equal_stock_generate(tiny_model):
    from synpo_workloads.engines import SamplingParams
    from synpo_workloads.engines.hf import TransformersEngine

    engine = TransformersEngine(tiny_model, batch_size=3)
    prompts = [[{"role": "user", "content": f"Question {i}: " + "word " * i}] for i in range(7)] + ["plain"]
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=12, seed=3)
    fast = engine.generate(prompts, params)
    fast_tokens = engine.last_stats["new_tokens"]
    engine.fast_sampling = False
    stock = engine.generate(prompts, params)
    assert fast == stock
    assert engine.last_stats["new_tokens"] == fast_tokens
    assert 0 < fast_tokens <= len(prompts) * 12
