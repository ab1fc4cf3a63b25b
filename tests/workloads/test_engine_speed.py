"""The transformers engine's fast paths keep generate()'s semantics: the fused top-k/top-p filter keeps the
same tokens as transformers' TopK → TopP warpers, so seeded outputs are identical to the stock path; the
static decoder computes the model's own logits (left padding included), so greedy decoding gives generate()'s
tokens, and its sampler draws from the same filtered distribution."""

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
    engine.static_decoding = False  # this test is about the filter inside generate()
    prompts = [[{"role": "user", "content": f"Question {i}: " + "word " * i}] for i in range(7)] + ["plain"]
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=12, seed=3)
    fast = engine.generate(prompts, params)
    fast_tokens = engine.last_stats["new_tokens"]
    engine.fast_sampling = False
    stock = engine.generate(prompts, params)
    assert fast == stock
    assert engine.last_stats["new_tokens"] == fast_tokens
    assert 0 < fast_tokens <= len(prompts) * 12


def _rows(engine, n=5):
    tok = engine.tokenizer
    return [tok(f"question {i}: " + "word " * (3 * i), add_special_tokens=False)["input_ids"] for i in range(n)]


def test_static_decoder_computes_the_models_logits_for_left_padded_rows(tiny_model):
    from synpo_workloads.engines.decode import StaticDecoder, supports
    from synpo_workloads.engines.hf import TransformersEngine

    engine = TransformersEngine(tiny_model)
    model, rows = engine.model, _rows(engine)
    assert supports(model)
    seen = []

    def greedy(logits):
        seen.append(logits.clone())
        return logits.argmax(-1)

    decoder = StaticDecoder(model, batch=8, max_len=128)  # 3 unused rows
    decoder.prefill_rows = 3  # the prompts go through in three chunks
    new = decoder.generate(rows, max_new=12, sample=greedy, eos=[], pad_id=engine.tokenizer.pad_token_id)
    assert [len(r) for r in new] == [12] * len(rows)
    for i, (row, gen) in enumerate(zip(rows, new, strict=True)):
        with torch.no_grad():  # the row alone, unpadded, through the model's own forward
            ref = model(torch.tensor([row + gen[:-1]])).logits[0, len(row) - 1:].float()
        got = torch.stack([step[i] for step in seen])
        assert torch.allclose(got, ref, atol=1e-4), (i, (got - ref).abs().max())
    # a second batch reuses the cache: nothing of the first leaks into it
    seen.clear()
    again = decoder.generate(rows[:2], max_new=12, sample=greedy, eos=[], pad_id=engine.tokenizer.pad_token_id)
    assert again == new[:2]


def test_static_decoding_gives_generates_greedy_tokens(tiny_model):
    from synpo_workloads.engines import SamplingParams
    from synpo_workloads.engines.hf import TransformersEngine

    engine = TransformersEngine(tiny_model, batch_size=3)
    rows = _rows(engine, 7)
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    eos = {engine.tokenizer.eos_token_id}
    static = engine._batch_decoder(params, eos, 50)(rows)
    engine.static_decoding = False
    stock = engine._batch_decoder(params, eos, 50)(rows)
    assert static == stock


def test_sampler_draws_from_the_top_k_top_p_distribution():
    from synpo_workloads.engines.sampling import filter_scores, sample_top_k_top_p

    torch.manual_seed(0)
    scores = torch.tensor([[3.0, 2.5, 2.0, 1.0, 0.5, 0.0, -1.0, -2.0],
                           [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    for top_k, top_p in ((8, 1.0), (5, 0.9), (8, 0.5)):
        expected = filter_scores(scores, top_p, top_k).softmax(-1)
        draws = sample_top_k_top_p(scores.repeat(20000, 1), top_p, top_k).view(20000, 2)
        for row in range(2):
            freq = torch.bincount(draws[:, row], minlength=8).float() / 20000
            assert (freq - expected[row]).abs().max() < 0.015, (top_k, top_p, row, freq, expected[row])
            assert (freq[expected[row] == 0] == 0).all()  # never a filtered-out token


def test_static_decoder_ends_rows_at_eos_and_at_stop_strings(tiny_model):
    from synpo_workloads.engines.decode import StaticDecoder
    from synpo_workloads.engines.hf import TransformersEngine, generated_length
    from synpo_workloads.engines.sampling import make_sampler

    engine = TransformersEngine(tiny_model)
    rows, pad = _rows(engine, 3), engine.tokenizer.pad_token_id
    sample = make_sampler(1.0, 1.0, None)  # diverse tokens; every row draws every step, so seeds line up
    decoder = StaticDecoder(engine.model, batch=3, max_len=64)
    torch.manual_seed(5)
    free = decoder.generate(rows, max_new=12, sample=sample, eos=[], pad_id=pad)
    eos = next(t for t in free[0] if t not in free[1] + free[2] and t != pad)  # ends row 0 only
    torch.manual_seed(5)
    ended = decoder.generate(rows, max_new=12, sample=sample, eos=[eos], pad_id=pad, sync_every=4,
                             stopped=lambda i, tokens: 3 if i == 1 and len(tokens) >= 4 else None)
    n0 = generated_length(ended[0], {eos}, pad)
    assert ended[0][:n0] == free[0][:n0] and ended[0][n0 - 1] == eos
    assert all(t == pad for t in ended[0][n0:])
    # stopped at the 4-step check, its tokens after the (pretend) stop string dropped
    assert ended[1][:3] == free[1][:3] and all(t == pad for t in ended[1][3:])
    assert ended[2] == free[2]


def test_stop_prefix_is_the_shortest_prefix_holding_a_stop_string():
    from synpo_workloads.engines.hf import stop_prefix

    def decode(tokens):
        return "".join(chr(ord("a") + t) for t in tokens)

    tokens = [0, 1, 2, 3, 1, 2, 3]  # "abcdbcd"
    assert stop_prefix(tokens, decode, ["cd"]) == 4
    assert stop_prefix(tokens, decode, ["x", "bc"]) == 3
    assert stop_prefix(tokens, decode, ["dbcd"]) == 7
    assert stop_prefix(tokens, decode, ["e"]) is None


def test_seeded_static_sampling_is_reproducible(tiny_model):
    from synpo_workloads.engines import SamplingParams
    from synpo_workloads.engines.hf import TransformersEngine

    engine = TransformersEngine(tiny_model, batch_size=4)
    prompts = [f"prompt {i} " + "word " * i for i in range(6)]
    first = engine.generate(prompts, SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=10, seed=1))
    tokens = engine.last_stats["new_tokens"]
    assert engine.generate(prompts, SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=10, seed=1)) == first
    assert engine.last_stats["new_tokens"] == tokens


def test_metered_engine_sums_the_generation_figures_of_a_stage(tiny_model):
    from synpo_workloads.engines import Metered, SamplingParams
    from synpo_workloads.engines.hf import TransformersEngine

    engine = Metered(TransformersEngine(tiny_model, batch_size=4))
    params = SamplingParams(temperature=0.7, max_new_tokens=8, seed=1)
    engine.generate(["one", "two", "three"], params)
    first = engine.engine.last_stats["new_tokens"]
    engine.generate(["four", "five"], params)
    result = engine.result()
    assert set(result) == set(Metered.RESULT_KEYS)
    assert result["generatedPrompts"] == 5
    assert result["generatedTokens"] == first + engine.engine.last_stats["new_tokens"] > 0
    assert result["generationSeconds"] > 0
    assert result["tokensPerSecond"] == pytest.approx(result["generatedTokens"] / engine.seconds, abs=0.1)
