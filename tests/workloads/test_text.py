"""Pure logic: keywords, tags, near duplicates, repetition, win rates."""

from __future__ import annotations

import random

import pytest

from synpo_workloads import text, winrate
from synpo_workloads.stages.pairs import accumulate, drop_reason, pair_id

pytestmark = pytest.mark.workloads


def test_keyword_candidates_drop_stop_words_and_names():
    para = ("Marie Curie studied radioactivity in Paris. Radioactivity releases energy, and the energy "
            "of decaying atoms heats rocks. Curie measured the radiation carefully.")
    words = text.keyword_candidates(para)
    assert "radioactivity" in words  # sentence-initial once, lowercase elsewhere: kept
    assert {"energy", "atoms", "rocks", "radiation"} <= set(words)
    assert not {"marie", "curie", "paris"} & set(words)  # only ever capitalised: a name
    assert not {"the", "and", "in", "of"} & set(words)
    assert len(words) == len(set(words))


def test_keyword_stream_deterministic_same_paragraph_and_with_replacement():
    cands = [["alpha", "beta", "gamma", "delta"], ["one", "two"], ["red", "green", "blue"]]
    a = text.keyword_stream(cands, 0, 7, 3, seed=1)
    assert a == text.keyword_stream(cands, 0, 7, 3, seed=1) and len(a) == 7  # more lists than paragraphs
    for para, kws in a:
        assert para != 1 and len(set(kws)) == 3 and set(kws) <= set(cands[para])
    assert text.keyword_stream([["x"]], 0, 3, 3, seed=0) == []


def test_keyword_stream_positions_do_not_depend_on_the_count():
    """Iteration t's lists are positions (t-1)m..tm-1 whatever the iteration count: raising it adds lists."""
    cands = [[f"w{i}a", f"w{i}b", f"w{i}c", f"w{i}d"] for i in range(10)]
    whole = text.keyword_stream(cands, 0, 12, 3, seed=4)
    assert text.keyword_stream(cands, 4, 4, 3, seed=4) == whole[4:8]
    assert len({p for p, _ in whole[:10]}) == 10  # distinct paragraphs while the corpus lasts


def test_generator_keywords_two_own_one_noise():
    cands = [["apple", "banana", "cherry"], ["granite", "basalt"], ["violin", "cello"]]
    for seed in range(20):
        kws = text.generator_keywords(cands, 0, 3, 1, random.Random(seed))
        own = [k for k in kws if k in cands[0]]
        noise = [k for k in kws if k not in cands[0]]
        assert len(own) == 2 and len(noise) == 1 and noise[0] in cands[1] + cands[2]
    assert text.generator_keywords([[], ["a"]], 0, 3, 1, random.Random(0)) is None


@pytest.mark.parametrize("raw, expected", [
    ("<question>What is 2+2?</question><solution>4</solution>", ("What is 2+2?", "4")),
    ("Answer:\n<question> Why is the sky blue? </question>", ("Why is the sky blue?", None)),
    ("<question>unclosed question", None),
    ("no tags at all", None),
    ("<question>   </question>", None),
    ("<question><question>nested</question>", None),
])
def test_parse_tagged(raw, expected):
    assert text.parse_tagged(raw) == expected


def test_dedupe_near_duplicates():
    texts = ["How do vaccines train the immune system?",
             "how do vaccines train the immune system",      # identical after normalisation
             "How do vaccines train the human immune system?",  # Jaccard 7/8 ≥ 0.8
             "Explain how glaciers carve valleys.",
             "",
             "Explain how rivers carve valleys."]           # 4/6 < 0.8: kept
    assert text.dedupe(texts, 0.8) == [0, 3, 5]


def test_dedupe_matches_brute_force():
    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(12)]
    texts = [" ".join(rng.sample(vocab, rng.randint(2, 7))) for _ in range(150)]
    kept = []
    for i, t in enumerate(texts):
        s = set(text.normalise_tokens(t))
        if not any(text.jaccard(s, set(text.normalise_tokens(texts[j]))) >= 0.8 for j in kept):
            kept.append(i)
    assert text.dedupe(texts, 0.8) == kept


def test_repetition_ratio():
    assert text.repetition_ratio("a b c d e f", 3) == 0.0
    assert text.repetition_ratio("short", 3) == 0.0
    loop = "the cat sat " * 20
    assert text.repetition_ratio(loop, 3) > 0.9


def test_pair_filters_and_accumulation():
    assert drop_reason("good answer here", "bad", 0.5, 0.1, 0.5, 3) is None
    assert drop_reason("good", "bad", 0.05, 0.1, 0.5, 3) == "margin"
    assert drop_reason("same", "same", 1.0, 0.1, 0.5, 3) == "identical"
    assert drop_reason("", "x", 1.0, 0.1, 0.5, 3) == "empty"
    assert drop_reason("go go go " * 10, "fine answer", 1.0, 0.1, 0.5, 3) == "repetition"
    a = {"id": pair_id("p", "c", "r")}
    b = {"id": pair_id("p", "c2", "r")}
    dataset, added = accumulate([a], [a, b, b])
    assert dataset == [a, b] and added == [b]


def test_win_rate_and_length_control():
    assert winrate.win_rate([1, 0, 0.5, 1]) == 0.625
    assert winrate.preference_from_scores(0.3, 0.3) == 0.5
    # The judge prefers whichever answer is longer, always: length alone explains every verdict, so a
    # length-free win rate would be an extrapolation and none is reported (more in test_winrate.py).
    rng = random.Random(0)
    mine, other, prefs = [], [], []
    for _ in range(200):
        a, b = rng.randint(50, 400), rng.randint(50, 400)
        mine.append(a + 100)  # the model is systematically longer
        other.append(b)
        prefs.append(1.0 if a + 100 > b else 0.0)
    lc = winrate.lc_win_rate(prefs, mine, other)
    assert winrate.win_rate(prefs) > 0.7 and lc.value is None and "separates" in lc.reason
    assert winrate.lc_win_rate([1.0] * 12, list(range(12)), [3] * 12).value is None  # all one way


def test_batch_and_warmup_arithmetic():
    from synpo_workloads import training

    assert training.micro_batch(32, None) == 8 and training.micro_batch(12, None) == 6
    assert training.micro_batch(7, None) == 7 and training.micro_batch(8, 16) == 8
    assert training.accumulation(32, 8, 1) == 4 and training.accumulation(32, 8, 4) == 1
    # batchSize is global: 2 processes take 4 each, so 8 examples per optimizer step whatever the world size
    assert training.per_device(8, 2) == 4 and training.micro_batch(training.per_device(8, 2), None) == 4
    assert training.accumulation(8, 4, 2) == 1 and training.accumulation(128, 8, 8) == 2
    assert training.sharding(False, 2, True) == {"gradient_checkpointing": True}  # gloo on the CPU: no FSDP
    fsdp = training.sharding(True, 8, True)
    assert fsdp["fsdp"] is True and fsdp["fsdp_config"]["activation_checkpointing"] is True
    assert training.sharding(True, 1, False) == {"gradient_checkpointing": False}
    assert training.total_steps(7, 8, 8, 1.0) == 1  # one step...
    assert training.warmup_steps(0.1, 1) == 0  # ...is not spent at learning rate 0
    assert training.total_steps(126, 8, 8, 1.0) == 16 and training.warmup_steps(0.1, 16) == 1
    assert training.total_steps(100, 32, 8, 3.0) == 9  # 13 batches // 4 = 3 per epoch


def test_progress_lines_are_what_the_local_executor_parses(capsys):
    import json

    from synpo_operator.executors.local import PROGRESS_PREFIX
    from synpo_workloads import progress

    progress.report(3, 10, "prompts", force=True)
    line = capsys.readouterr().out.strip()
    assert line.startswith(PROGRESS_PREFIX)
    assert json.loads(line[len(PROGRESS_PREFIX):]) == {"done": 3, "total": 10, "unit": "prompts"}
