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


class _Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint over real HTTP that prefers the answer mentioning 'good'; records the
    Authorization header. `mode` injects faults: 401, garbage replies, or logprobs on the verdict token."""

    seen: list = []
    mode = "plain"

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.seen.append((self.path, self.headers.get("Authorization"), body["model"], body.get("logprobs")))
        if _Judge.mode == "401":
            return self._send(401, {"error": {"message": "invalid api key", "type": "auth"}})
        content = body["messages"][-1]["content"]
        a = content.split("### Answer A:")[1].split("### Answer B:")[0]
        verdict = "A" if "good" in a else "B"
        message = {"plain": verdict, "prose": f"I think a better answer is {verdict}.",
                   "garbage": "a tie, I cannot decide", "logprobs": verdict}[_Judge.mode]
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": message}}
        if _Judge.mode == "logprobs" and body.get("logprobs"):
            other = "B" if verdict == "A" else "A"
            top = [{"token": verdict, "logprob": math.log(0.8), "bytes": None},
                   {"token": other, "logprob": math.log(0.2), "bytes": None}]
            choice["logprobs"] = {"content": [{"token": verdict, "logprob": math.log(0.8), "bytes": None,
                                               "top_logprobs": top}]}
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
    judge = OpenAIJudge(judge_server, "judge-model", seed=1)
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
    v = OpenAIJudge(judge_server, "m", seed=3).prefer(["p"] * 4, ["good", "good", "meh", "meh"],
                                                      ["meh", "meh", "good", "good"])
    assert v.preferences == pytest.approx([0.8, 0.8, 0.2, 0.2]) and v.weighted == 4
    assert _Judge.seen[-1][3] is True


def test_unparseable_replies_are_counted_not_ties(judge_server):
    _Judge.mode = "garbage"
    v = OpenAIJudge(judge_server, "m").prefer(["p"] * 3, ["a"] * 3, ["b"] * 3)
    assert v.preferences == [None] * 3 and v.unparsed == 3


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
    assert result["n"] == 12 and result["judgeErrors"] == 0 and result["judgeCalls"] == 12
    assert result["winRateLow"] <= result["winRate"] <= result["winRateHigh"]
    assert ("lcWinRate" in result) != ("lcWinRateReason" in result)
    assert result["vsReferencesWinRate"] == result["winRate"]
    metrics = json.loads((tmp_path / "default" / "test" / "iter-0" / "evaluate" / "metrics.json").read_text())
    assert [m["judge"] for m in metrics["judges"]] == ["openai", "similarity"]
    assert set(metrics["judges"][1]["comparisons"]) == {"references"}


def test_evaluate_fails_on_judge_errors_above_the_limit(tiny_model, tmp_path, judge_server):
    judges = [{"type": "openai", "endpoint": judge_server, "model": "judge"}]
    _Judge.mode = "garbage"
    with pytest.raises(JudgeError, match=r"12 of 12 comparisons failed .*maxJudgeErrorRate 0.05"):
        _evaluate(tiny_model, tmp_path / "a", judges)()
    result = _evaluate(tiny_model, tmp_path / "b", judges, maxJudgeErrorRate=1.0)()
    assert result["judgeErrors"] == 12 and result["n"] == 0 and "winRate" not in result


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
    assert result["vsReferencesN"] == 12 and result["judgeCalls"] == 24 and result["judgeErrors"] == 0
    for opponent in ("M0", "References"):
        assert result[f"vs{opponent}WinRateLow"] <= result[f"vs{opponent}WinRate"] <= result[f"vs{opponent}WinRateHigh"]
    rows = [json.loads(line) for line in (tmp_path / "default" / "test" / "iter-1" / "evaluate" / "outputs.jsonl")
            .read_text().splitlines()]
    assert set(rows[0]["preferences"]["openai"]) == {"references", "M0"}
    md = (tmp_path / "default" / "test").joinpath(report.write_report(str(tmp_path / "default" / "test"))).read_text()
    assert "| 1 | M0 | 12 |" in md and "| 1 | references | 12 |" in md and "| 0 | references | 12 |" in md
    assert "| 0 | M0 |" not in md
