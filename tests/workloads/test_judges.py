"""Scorers and judges: similarity (offline MiniLM), reward model, OpenAI-compatible pairwise judge, evaluate."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from synpo_workloads.errors import ConfigError
from synpo_workloads.judges import make_scorer
from synpo_workloads.judges.openai_judge import JudgeError, OpenAIJudge, parse_verdict

pytestmark = pytest.mark.workloads


def test_similarity_scorer_offline():
    scorer = make_scorer({"type": "similarity"})
    prompts = ["How do plants make food from sunlight?"] * 2
    on_topic = "Plants use photosynthesis: chlorophyll captures sunlight to turn water and CO2 into sugar."
    off_topic = "The stock market closed higher on Tuesday."
    good, bad = scorer.score(prompts, [on_topic, off_topic])
    assert good > bad
    ref, = scorer.score(prompts[:1], [on_topic], [on_topic])
    assert ref == pytest.approx(1.0, abs=1e-4)  # with a reference: similarity to it


def test_reward_model_scorer(tiny_model, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig.from_pretrained(tiny_model)
    config.num_labels = 1
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path)
    scorer = make_scorer({"type": "rewardModel", "model": str(tmp_path)})
    scores = scorer.score(["q1", "q2", "q3"], ["a", "a longer answer", ""])
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)


def test_openai_is_not_a_filter():
    with pytest.raises(ConfigError, match="spec.filter.scorer.type"):
        make_scorer({"type": "openai", "endpoint": "http://x/v1", "model": "m"})


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _top(*alternatives) -> list[dict]:
    return [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in alternatives]


def _tokens(tokens: list[str], at: int, verdict: str, other: str, first: list[tuple[str, float]] | None = None,
            p_verdict: float = 0.8) -> list[dict]:
    """Logprobs content of a reply spelt by `tokens`: the verdict letter's token at index `at` with
    P(verdict) = p_verdict against the other letter; `first`: the first position's alternatives (where an
    article "A" or a bare-letter reply shows up)."""
    out = []
    for i, token in enumerate(tokens):
        if i == at:
            lead = token[: len(token) - len(token.lstrip())]
            top = _top((token, p_verdict), (lead + other, 1 - p_verdict))
        elif i == 0 and first:
            top = _top(*first)
        else:
            top = _top((token, 0.99))
        out.append({"token": token, "logprob": top[0]["logprob"], "bytes": None, "top_logprobs": top})
    return out


def _reply(mode: str, verdict: str) -> tuple[str, list[dict] | None]:
    """A judge's reply in `mode` naming `verdict`: its text and, for the logprob modes, its logprobs content as a
    real server sends them (one entry per generated token, the top alternatives of each)."""
    other = "B" if verdict == "A" else "A"
    if mode in ("plain", "first"):
        return verdict, None
    if mode == "prose":
        return f"I think a better answer is {verdict}.", None
    if mode == "garbage":
        return "a tie, I cannot decide", None
    if mode == "logprobs":
        return verdict, _tokens([verdict], 0, verdict, other)
    if mode == "disagree":  # a sampling or quantised server: the text names one letter, its probabilities the other
        return verdict, _tokens([verdict], 0, verdict, other, p_verdict=0.4)
    tokens, at, first = {
        # the first token's alternatives hold the article "A": read there, every verdict would be A
        "sentence": (["The", " better", " answer", " is", f" {verdict}", "."], 4,
                     [("The", 0.9), ("A", 0.06), ("B", 0.04)]),
        "bold": (["**", verdict, "**"], 1, [("**", 0.7), (other, 0.2), (verdict, 0.1)]),
        "answer": (["Answer", ":", f" {verdict}", " —", " because", " it", " is", " correct", "."], 2,
                   [("Answer", 0.85), (other, 0.15)]),
        # a refusal whose first token had bare-letter replies among its alternatives
        "refusal": (["I", "'m", " sorry", ",", " I", " can", "'t", " judge", " these", "."], -1,
                    [("I", 0.5), ("A", 0.3), ("B", 0.2)]),
    }[mode]
    return "".join(tokens), _tokens(tokens, at, verdict, other, first)


class _Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint over real HTTP that prefers the answer mentioning 'good', else the longer
    (mode "first": always the first position); records the Authorization header and the prompts. `mode` picks the reply's
    shape (`_reply`) or injects faults: 401, garbage replies."""

    seen: list = []
    contents: list = []
    mode = "plain"

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.seen.append((self.path, self.headers.get("Authorization"), body["model"], body.get("logprobs")))
        if _Judge.mode == "401":
            return self._send(401, {"error": {"message": "invalid api key", "type": "auth"}})
        content = body["messages"][-1]["content"]
        _Judge.contents.append(content)
        a, b = content.split("### Answer A:")[1].split("### Answer B:")
        b = b.split("Reply with")[0]
        # position-free ('good' first, then the longer answer, then the text) unless the answers are the same
        rank = {x: ("good" in x, len(x), x) for x in (a, b)}
        verdict = "A" if _Judge.mode == "first" or rank[a] >= rank[b] else "B"
        message, logprobs = _reply(_Judge.mode, verdict)
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": message}}
        if logprobs and body.get("logprobs"):
            choice["logprobs"] = {"content": logprobs}
        self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [choice]})

    def _send(self, code, doc):
        out = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    _Judge.mode = "plain"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    _Judge.mode = "plain"


@pytest.mark.parametrize("mode", ["plain", "prose"])
def test_openai_pairwise_judge(judge_server, monkeypatch, mode):
    monkeypatch.setenv("SYNPO_JUDGE_API_KEY", "sekret")
    _Judge.mode = mode
    judge = OpenAIJudge(judge_server, "judge-model")
    v = judge.prefer(["p"] * 6, ["good"] * 3 + ["meh"] * 3, ["meh"] * 3 + ["good"] * 3)
    assert v.preferences == [1.0] * 3 + [0.0] * 3 and v.failed == 0
    assert _Judge.seen[-1][:3] == ("/v1/chat/completions", "Bearer sekret", "judge-model")


def test_parse_verdict_is_case_sensitive():
    assert parse_verdict("  B.") == "B" and parse_verdict("**A**") == "A"
    assert parse_verdict("Answer: B") == "B" and parse_verdict("The better answer is A, clearly.") == "A"
    assert parse_verdict("I think a better answer is B") == "B"  # the article "a" is not verdict A
    assert parse_verdict("a") is None and parse_verdict("neither") is None
    assert parse_verdict("A and B are equally good") is None


def test_logprobs_give_the_winning_letters_probability(judge_server):
    _Judge.mode = "logprobs"
    v = OpenAIJudge(judge_server, "m").prefer(["p"] * 4, ["good", "good", "meh", "meh"],
                                              ["meh", "meh", "good", "good"])
    assert v.preferences == pytest.approx([0.8, 0.8, 0.2, 0.2]) and v.weighted == v.calls == 8
    assert _Judge.seen[-1][3] is True


@pytest.mark.parametrize("mode", ["sentence", "bold", "answer"])
def test_verdict_is_read_where_the_text_names_it(judge_server, mode):
    """Realistic replies ("The better answer is B.", "**B**", "Answer: A — because…"), whose first token's
    alternatives hold a letter (the article "A", a bare-letter reply): the probability is read at the verdict
    letter's own token, never at the first position that offers a letter."""
    _Judge.mode = mode
    v = OpenAIJudge(judge_server, "m").prefer(["p"] * 4, ["good", "good", "meh", "meh"],
                                              ["meh", "meh", "good", "good"])
    assert v.preferences == pytest.approx([0.8, 0.8, 0.2, 0.2]) and v.weighted == 8 and v.failed == 0


def test_refusals_are_judge_errors_even_with_letters_among_the_logprobs(judge_server):
    _Judge.mode = "refusal"
    v = OpenAIJudge(judge_server, "m").prefer(["p"] * 3, ["good"] * 3, ["meh"] * 3)
    assert v.preferences == [None] * 3 and v.unparsed == 6 and v.weighted == 0


def test_text_and_probabilities_that_disagree_are_judge_errors(judge_server):
    _Judge.mode = "disagree"
    v = OpenAIJudge(judge_server, "m").prefer(["p"] * 3, ["good"] * 3, ["meh"] * 3)
    assert v.preferences == [None] * 3 and v.disagreed == v.failed == 6
    assert "names A but its log-probabilities give P(A) = 0.40" in v.messages[0]


def test_read_reply_on_token_splits():
    from synpo_workloads.judges.openai_judge import Position, read_reply, verdict_position

    assert verdict_position(["The", " better", " answer", " is", " B", "."], "B") == 4
    assert verdict_position(["**", "B", "**"], "B") == 1
    assert verdict_position(["Answer", ":", " A", " —", " because", " B", " is", " vague"], "A") == 2
    assert verdict_position(["B"], "A") is None  # the tokens spell another verdict than the text: not used
    pos = [Position("**", math.log(0.7), [("**", math.log(0.7)), ("A", math.log(0.3))]),
           Position("B", math.log(0.9), [("B", math.log(0.9)), ("A", math.log(0.1))]),
           Position("**", 0.0, [])]
    call = read_reply("**B**", pos, model_is="A")
    assert call.outcome == "weighted" and call.preference == pytest.approx(0.1) and call.named_first is False
    assert read_reply("**B**", None, model_is="B").preference == 1.0  # no logprobs: the text alone
    assert read_reply("I'm sorry, I can't help with that.", pos, "A").outcome == "unparsed"


def test_every_pair_is_judged_in_both_orders(judge_server):
    _Judge.contents = []
    v = OpenAIJudge(judge_server, "m").prefer(["p1", "p2"], ["good one", "meh one"], ["meh two", "good two"])
    shown = sorted((c.split("### Answer A:\n")[1].split("\n")[0], c.split("### Answer B:\n")[1].split("\n")[0])
                   for c in _Judge.contents)
    assert shown == sorted([("good one", "meh two"), ("meh two", "good one"), ("meh one", "good two"),
                            ("good two", "meh one")])
    assert v.preferences == [1.0, 0.0] and v.calls == 4
    assert v.position_figures() == {"positionConsistency": 1.0, "ties": 0, "firstPositionRate": 0.5,
                                    "positionBiased": False}


def test_a_judge_that_follows_the_position_gives_ties_and_is_flagged(judge_server):
    _Judge.mode = "first"
    v = OpenAIJudge(judge_server, "m").prefer(["p"] * 4, ["good"] * 4, ["meh"] * 4)
    assert v.preferences == [0.5] * 4
    assert v.position_figures() == {"positionConsistency": 0.0, "ties": 4, "firstPositionRate": 1.0,
                                    "positionBiased": True}


def test_unparseable_replies_are_counted_not_ties(judge_server):
    _Judge.mode = "garbage"
    v = OpenAIJudge(judge_server, "m").prefer(["p"] * 3, ["a"] * 3, ["b"] * 3)
    assert v.preferences == [None] * 3 and v.unparsed == 6


def test_dead_or_unauthorised_endpoint_fails_fast(judge_server):
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    started = time.monotonic()
    with pytest.raises(JudgeError, match=f"openai judge at {dead}.*APIConnectionError"):
        OpenAIJudge(dead, "m", timeout=2).prefer(["p"] * 50, ["a"] * 50, ["b"] * 50)
    assert time.monotonic() - started < 30
    _Judge.mode = "401"
    with pytest.raises(JudgeError, match=f"openai judge at {judge_server}.*HTTP 401: invalid api key"):
        OpenAIJudge(judge_server, "m").prefer(["p"] * 5, ["a"] * 5, ["b"] * 5)


def _evaluate(tiny_model, tmp_path, judges, **evaluation):
    from wl_helpers import run_in_process, stage_configs, tiny_spec

    spec = tiny_spec(tiny_model, str(tmp_path), iterations=1,
                     evaluation={"judges": judges, "maxPrompts": 12, **evaluation}, generation={"maxNewTokens": 8})
    node, config = next((n, c) for n, c in stage_configs(spec, str(tmp_path)) if n.key == "i0-evaluate")
    return lambda: run_in_process(node, config)[0]


def test_evaluate_with_openai_judge(tiny_model, tmp_path, judge_server):
    judges = [{"type": "openai", "endpoint": judge_server, "model": "judge"}, {"type": "similarity"}]
    result = _evaluate(tiny_model, tmp_path, judges)()
    assert result["judge"] == "openai" and result["against"] == "references"
    assert result["n"] == 12 and result["judgeErrors"] == 0 and result["judgeCalls"] == 24
    assert result["positionConsistency"] == result["vsReferencesPositionConsistency"] == 1.0
    assert result["ties"] == 0 and result["positionBiased"] is False
    assert result["winRateLow"] <= result["winRate"] <= result["winRateHigh"]
    assert ("lcWinRate" in result) != ("lcWinRateReason" in result)
    assert result["vsReferencesWinRate"] == result["winRate"]
    metrics = json.loads((tmp_path / "default" / "test" / "iter-0" / "evaluate" / "metrics.json").read_text())
    assert [m["judge"] for m in metrics["judges"]] == ["openai", "similarity"]
    assert set(metrics["judges"][1]["comparisons"]) == {"references"}


def test_evaluate_fails_on_judge_errors_above_the_limit(tiny_model, tmp_path, judge_server):
    judges = [{"type": "openai", "endpoint": judge_server, "model": "judge"}]
    _Judge.mode = "garbage"
    with pytest.raises(JudgeError, match=r"24 of 24 comparisons failed .*maxJudgeErrorRate 0.05"):
        _evaluate(tiny_model, tmp_path / "a", judges)()
    result = _evaluate(tiny_model, tmp_path / "b", judges, maxJudgeErrorRate=1.0)()
    assert result["judgeErrors"] == 24 and result["n"] == 0 and "winRate" not in result


def test_evaluate_fails_loudly_when_text_and_probabilities_disagree(tiny_model, tmp_path, judge_server):
    _Judge.mode = "disagree"
    with pytest.raises(JudgeError, match=r"24 of 24 comparisons failed .*names [AB] but its log-probabilities"):
        _evaluate(tiny_model, tmp_path, [{"type": "openai", "endpoint": judge_server, "model": "judge"}])()


def test_evaluate_flags_a_position_biased_judge(tiny_model, tmp_path, judge_server):
    _Judge.mode = "first"
    result = _evaluate(tiny_model, tmp_path, [{"type": "openai", "endpoint": judge_server, "model": "judge"}])()
    assert result["winRate"] == 0.5 and result["ties"] == 12 and result["positionConsistency"] == 0.0
    assert result["positionBiased"] is True and result["vsReferencesFirstPositionRate"] == 1.0


def test_evaluate_with_a_closed_port_fails_quickly_naming_the_endpoint(tiny_model, tmp_path):
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    stage = _evaluate(tiny_model, tmp_path, [{"type": "openai", "endpoint": dead, "model": "judge"}])
    started = time.monotonic()
    with pytest.raises(JudgeError, match=f"openai judge at {dead}"):
        stage()
    assert time.monotonic() - started < 60


def test_every_opponent_is_judged_separately_and_reported(tiny_model, tmp_path, judge_server):
    """M_t (t ≥ 1) against the references and against M0, each with n and an interval; the report lists and
    draws them as separate series."""
    from wl_helpers import run_in_process, stage_configs, tiny_spec

    from synpo_workloads import report

    judges = [{"type": "openai", "endpoint": judge_server, "model": "judge"}, {"type": "similarity"}]
    spec = tiny_spec(tiny_model, str(tmp_path), iterations=1, evaluation={"judges": judges, "maxPrompts": 12},
                     generation={"maxNewTokens": 8})
    configs = {n.key: (n, c) for n, c in stage_configs(spec, str(tmp_path))}
    run_in_process(*configs["i0-evaluate"])
    node, config = configs["i1-evaluate"]
    config = {**config, "models": {**config["models"], "policy": tiny_model}}  # M_1 stands in: same weights
    result = run_in_process(node, config)[0]
    assert result["against"] == "M0" and result["n"] == result["vsM0N"] == 12
    assert result["vsReferencesN"] == 12 and result["judgeCalls"] == 48 and result["judgeErrors"] == 0
    assert result["vsReferencesPositionConsistency"] == 1.0
    assert result["vsM0Ties"] == 12 and result["vsM0WinRate"] == 0.5  # M_1 = M0 here: identical answers
    for opponent in ("M0", "References"):
        assert result[f"vs{opponent}WinRateLow"] <= result[f"vs{opponent}WinRate"] <= result[f"vs{opponent}WinRateHigh"]
    rows = [json.loads(line) for line in (tmp_path / "default" / "test" / "iter-1" / "evaluate" / "outputs.jsonl")
            .read_text().splitlines()]
    assert set(rows[0]["preferences"]["openai"]) == {"references", "M0"}
    md = (tmp_path / "default" / "test").joinpath(report.write_report(str(tmp_path / "default" / "test"))).read_text()
    assert "| 1 | M0 | 12 |" in md and "| 1 | references | 12 |" in md and "| 0 | references | 12 |" in md
    assert "| 0 | M0 |" not in md
