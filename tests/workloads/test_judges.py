"""Scorers and judges: similarity (offline MiniLM), reward model, OpenAI-compatible pairwise judge, evaluate."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from synpo_workloads.errors import ConfigError
from synpo_workloads.judges import make_scorer
from synpo_workloads.judges.openai_judge import OpenAIJudge, parse_verdict

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


class _Judge(BaseHTTPRequestHandler):
    """Prefers the answer that mentions 'good'; records the Authorization header."""

    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.seen.append((self.path, self.headers.get("Authorization"), body["model"]))
        content = body["messages"][-1]["content"]
        a = content.split("### Answer A:")[1].split("### Answer B:")[0]
        verdict = "A" if "good" in a else "B"
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": verdict}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_openai_pairwise_judge(judge_server, monkeypatch):
    monkeypatch.setenv("SYNPO_JUDGE_API_KEY", "sekret")
    judge = OpenAIJudge(judge_server, "judge-model", seed=1)
    prefs = judge.prefer(["p"] * 6, ["good"] * 3 + ["meh"] * 3, ["meh"] * 3 + ["good"] * 3)
    assert prefs == [1.0] * 3 + [0.0] * 3 and judge.errors == 0
    assert _Judge.seen[-1] == ("/v1/chat/completions", "Bearer sekret", "judge-model")
    assert parse_verdict("  b.") == "B" and parse_verdict("neither") is None
    dead = OpenAIJudge("http://127.0.0.1:9/v1", "m", retries=1, timeout=1)
    assert dead.prefer(["p"], ["a"], ["b"]) == [0.5] and dead.errors == 1


def test_evaluate_with_openai_judge(tiny_model, tmp_path, judge_server):
    from wl_helpers import run_in_process, stage_configs, tiny_spec

    judges = [{"type": "openai", "endpoint": judge_server, "model": "judge"}, {"type": "similarity"}]
    spec = tiny_spec(tiny_model, str(tmp_path), iterations=1, evaluation={"judges": judges, "maxPrompts": 4},
                     generation={"maxNewTokens": 8})
    node, config = next((n, c) for n, c in stage_configs(spec, str(tmp_path)) if n.key == "i0-evaluate")
    result = run_in_process(node, config)[0]
    assert result["judge"] == "openai" and result["against"] == "reference"
    assert 0 <= result["winRate"] <= 1 and 0 <= result["lcWinRate"] <= 1
    metrics = json.loads((tmp_path / "default" / "test" / "iter-0" / "evaluate" / "metrics.json").read_text())
    assert [m["judge"] for m in metrics["judges"]] == ["openai", "similarity"]
