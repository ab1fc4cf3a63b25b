"""The pre-flight stage: each check passes on what the stages can use and fails, naming the spec field and the
cause, on what they cannot — with real checkpoints (tiny, random), real files, real HTTP and a real S3 server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_judges import _Judge, closed_port, judge_server  # noqa: F401  (judge_server is a fixture)
from wl_helpers import REPO, stage_configs, tiny_spec

from synpo_operator.api.preflight import spec_key
from synpo_operator.api.run import SynPORunSpec
from synpo_workloads import store
from synpo_workloads.runtime import run_stage
from synpo_workloads.stages.preflight import PreflightError, run_checks

pytestmark = pytest.mark.workloads


@pytest.fixture(scope="module")
def reward_model(tiny_model, tmp_path_factory) -> str:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    target = tmp_path_factory.mktemp("tiny-rm")
    config = LlamaConfig.from_pretrained(tiny_model)
    config.num_labels = 1
    LlamaForSequenceClassification(config).save_pretrained(target)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(target)
    return str(target)


def checks(spec: dict, root: str | None) -> dict[str, dict]:
    return {o["field"]: o for o in run_checks(SynPORunSpec.model_validate(spec), root, log=lambda _: None)}


def failed(spec: dict, root: str | None) -> dict[str, str]:
    return {f: o["error"] for f, o in checks(spec, root).items() if not o["ok"]}


def test_a_usable_spec_passes_every_check(tiny_model, reward_model, tmp_path, judge_server):  # noqa: F811
    spec = tiny_spec(tiny_model, str(tmp_path), filter={"scorer": {"type": "rewardModel", "model": reward_model}},
                     evaluation={"judges": [{"type": "openai", "endpoint": judge_server, "model": "judge"},
                                            {"type": "similarity"}]})
    _Judge.seen.clear()
    started = time.monotonic()
    outcomes = checks(spec, str(tmp_path / "ns" / "run"))
    assert all(o["ok"] for o in outcomes.values()), outcomes
    assert set(outcomes) == {"spec.model.base", "spec.data.seed", "spec.data.corpus", "spec.data.eval",
                             "spec.filter.scorer.model", "spec.evaluation.judges[0]", "spec.storage.uri"}
    assert "score.weight" in outcomes["spec.filter.scorer.model"]["note"]
    assert len(_Judge.seen) == 1 and _Judge.seen[0][2] == "judge"  # one tiny request, with the judge's model
    assert list((tmp_path / "ns" / "run").iterdir()) == []  # the storage probe is gone
    assert time.monotonic() - started < 60


def test_a_causal_lm_as_reward_model_fails_naming_the_missing_head(tiny_model, tmp_path):
    spec = tiny_spec(tiny_model, str(tmp_path), filter={"scorer": {"type": "rewardModel", "model": tiny_model}},
                     evaluation={"judges": [{"type": "rewardModel", "model": tiny_model}]})
    bad = failed(spec, None)
    assert set(bad) == {"spec.filter.scorer.model", "spec.evaluation.judges[0].model"}
    assert "score.weight are not in the checkpoint (the model.safetensors header)" in bad["spec.filter.scorer.model"]
    assert "causal LM" in bad["spec.filter.scorer.model"]


def test_a_sharded_reward_model_is_read_from_its_index(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tiny_model).save_pretrained(tmp_path / "m", max_shard_size="100KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "m" / name).write_bytes((Path(tiny_model) / name).read_bytes())
    assert (tmp_path / "m" / "model.safetensors.index.json").exists()
    spec = tiny_spec(tiny_model, str(tmp_path), filter={"scorer": {"type": "rewardModel", "model": str(tmp_path / "m")}})
    assert "(model.safetensors.index.json)" in failed(spec, None)["spec.filter.scorer.model"]


def test_model_references_that_do_not_resolve(tiny_model, tmp_path):
    no_template = tmp_path / "no-template"
    no_template.mkdir()
    for f in Path(tiny_model).iterdir():
        (no_template / f.name).write_bytes(f.read_bytes())
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    (no_template / "chat_template.jinja").unlink(missing_ok=True)
    assert "no chat template" in failed(tiny_spec(str(no_template), str(tmp_path)), None)["spec.model.base"]
    assert "no such directory" in failed(tiny_spec(str(tmp_path / "nope"), str(tmp_path)), None)["spec.model.base"]
    assert "not installed" in failed(tiny_spec("package:no-such-synpo-model", str(tmp_path)), None)["spec.model.base"]
    hub = failed(tiny_spec("no-such-org/no-such-model", str(tmp_path)), None)["spec.model.base"]
    assert "not in the Hugging Face cache, with the hub offline" in hub  # the tests run offline


def test_data_sources(tiny_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "response": "a"}\n{"prompt": "q"}\n')
    spec = tiny_spec(tiny_model, str(tmp_path))
    spec["data"] = {"seed": str(bad), "corpus": str(tmp_path / "missing.jsonl"), "eval": str(tmp_path)}
    problems = failed(spec, None)
    assert "bad.jsonl:2: missing column 'response'" in problems["spec.data.seed"]
    assert "missing.jsonl: file not found" in problems["spec.data.corpus"]
    assert "is a directory" in problems["spec.data.eval"]


def test_a_big_data_file_is_read_only_at_its_head(tiny_model, tmp_path):
    big = tmp_path / "big.jsonl"
    big.write_text('{"text": "one paragraph"}\n' * 20000 + "not json at all\n")  # ~0.5 MB: the tail is unread
    spec = tiny_spec(tiny_model, str(tmp_path))
    spec["data"]["corpus"] = str(big)
    assert checks(spec, None)["spec.data.corpus"]["ok"]


def test_judge_endpoints(tiny_model, tmp_path, judge_server):  # noqa: F811
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    spec = tiny_spec(tiny_model, str(tmp_path), evaluation={"judges": [
        {"type": "openai", "endpoint": dead, "model": "judge"},
        {"type": "openai", "endpoint": judge_server, "model": "judge"}]})
    _Judge.mode = "401"
    started = time.monotonic()
    problems = failed(spec, None)
    assert time.monotonic() - started < 60
    assert problems["spec.evaluation.judges[0].endpoint"].startswith(f"{dead} does not answer (")
    assert "HTTP 401: invalid api key" in problems["spec.evaluation.judges[1].apiKeySecretRef"]


def test_each_judge_is_asked_with_its_own_key(tiny_model, tmp_path, judge_server, monkeypatch):  # noqa: F811
    monkeypatch.setenv("SYNPO_JUDGE_API_KEY", "first")
    monkeypatch.setenv("SYNPO_JUDGE_1_API_KEY", "second")
    spec = tiny_spec(tiny_model, str(tmp_path), evaluation={"judges": [
        {"type": "openai", "endpoint": judge_server, "model": "a"},
        {"type": "openai", "endpoint": judge_server, "model": "b"}]})
    _Judge.seen.clear()
    assert not failed(spec, None)
    assert [(s[1], s[2]) for s in _Judge.seen] == [("Bearer first", "a"), ("Bearer second", "b")]


def test_unwritable_storage(tiny_model, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("in the way")  # a file where the storage root's directory would be: unwritable even as root
    problems = failed(tiny_spec(tiny_model, str(blocked / "runs")), str(blocked / "runs" / "ns" / "run"))
    assert "Not a directory" in problems["spec.storage.uri"]


def test_storage_on_s3_with_a_missing_bucket_and_wrong_credentials(tiny_model, s3_env, tmp_path, monkeypatch):
    # both: moto checks no credentials, and SeaweedFS creates a missing bucket on a signed write
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()  # a cached client would keep the right secret
    try:
        spec = tiny_spec(tiny_model, "s3://no-such-bucket-synpo/runs")
        problems = failed(spec, "s3://no-such-bucket-synpo/runs/ns/run")
        assert "spec.storage.uri" in problems and problems["spec.storage.uri"]
    finally:
        fsspec.filesystem("s3").clear_instance_cache()  # nor may later tests get this one's wrong secret


def test_the_stage_records_its_spec_key_and_fails_with_exit_code_2(tiny_model, tmp_path):
    spec = tiny_spec(tiny_model, str(tmp_path / "runs"))
    key = spec_key(SynPORunSpec.model_validate(spec).to_api())
    node, config = next(stage_configs(spec, str(tmp_path / "runs")))
    assert node.key == "i0-preflight" and config["output"].endswith(f"iter-0/preflight/{key}")
    result = run_stage("preflight", config)
    assert result["specKey"] == key and result["checks"] == 5
    assert store.stage_done(config["output"])
    spec["data"]["eval"] = str(tmp_path / "gone.jsonl")
    node, config = next(stage_configs(spec, str(tmp_path / "runs")))
    with pytest.raises(PreflightError, match=r"spec\.data\.eval: .*gone\.jsonl: file not found"):
        run_stage("preflight", config)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "workloads"), str(REPO / "operator")])}
    proc = subprocess.run([sys.executable, "-m", "synpo_workloads", "preflight", "--config", str(path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert "synpo preflight: error: spec.data.eval:" in proc.stderr and "file not found" in proc.stderr
