"""vLLM's tensor parallelism follows the GPUs of a generation pod; the heads must divide by it (plan time)."""

from __future__ import annotations

import json

import yaml

from synpo_operator.api.parallelism import tensor_parallel_problem, tensor_parallel_size
from synpo_operator.api.run import SynPORunSpec
from synpo_operator.cli import main
from synpo_operator.modelinfo import attention_heads, model_problems
from synpo_operator.plan.graph import stage_graph
from synpo_operator.plan.resources import generation_gpus
from synpo_operator.plan.stage_config import stage_config

from .conftest import ROOT


def _spec(model: str, gpus: int, engine: str = "vllm", **generation) -> SynPORunSpec:
    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())["spec"]
    doc["model"]["base"] = model
    doc["resources"]["gpusPerPod"] = gpus
    doc["generation"].update(engine=engine, **generation)
    return SynPORunSpec.model_validate(doc)


def _checkpoint(tmp_path, heads: int) -> str:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_attention_heads": heads}))
    return str(tmp_path)


def test_size_is_the_pods_gpus():
    assert [tensor_parallel_size(g) for g in (0, 1, 2, 8)] == [1, 1, 2, 8]
    assert tensor_parallel_problem(32, 8) is None and tensor_parallel_problem(9, 0) is None
    problem = tensor_parallel_problem(9, 2)
    assert problem.startswith("spec.resources.gpusPerPod:") and "9 attention heads" in problem
    assert "use one of 1, 3, 9" in problem


def test_stage_configs_carry_the_gpus_of_their_pod():
    spec = _spec("some/hub-model", 4)
    gpus = {node.id.name: stage_config(spec, node, namespace="ns", run="r", storage_root="/s")["gpus"]
            for node in stage_graph(spec)}
    assert gpus["base-responses"] == gpus["prompts"] == gpus["refine"] == gpus["evaluate"] == 4
    assert gpus["keywords"] == 0
    assert generation_gpus(spec) == 4


def test_heads_read_from_a_local_checkpoint(tmp_path):
    model = _checkpoint(tmp_path, 9)
    assert attention_heads(model) == 9
    assert attention_heads("meta-llama/Meta-Llama-3-8B") is None  # a hub id: the stage checks at start
    assert attention_heads(str(tmp_path / "missing")) is None
    assert model_problems(_spec(model, 3)) == []
    assert model_problems(_spec(model, 2, engine="transformers")) == []
    (problem,) = model_problems(_spec(model, 2))
    assert "spec.resources.gpusPerPod" in problem and "9 attention heads" in problem


def test_synpo_plan_refuses_heads_that_do_not_divide(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    model = _checkpoint(tmp_path / "model", 9)
    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    doc["spec"]["model"]["base"] = model
    doc["spec"]["generation"]["engine"] = "vllm"
    doc["spec"]["resources"]["gpusPerPod"] = 4
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert "spec.resources.gpusPerPod" in err and "9 attention heads" in err and "4 GPUs" in err
    doc["spec"]["resources"]["gpusPerPod"] = 3
    doc["spec"]["resources"]["training"] = {"gpusPerNode": 4}  # 3 training processes could not split batch 8
    path.write_text(yaml.safe_dump(doc))
    assert main(["plan", str(path)]) == 0


def test_memory_share_is_a_validated_field():
    assert _spec("m", 1).generation.gpu_memory_utilization is None
    assert _spec("m", 1, gpuMemoryUtilization=0.5).generation.gpu_memory_utilization == 0.5
    import pydantic
    import pytest

    with pytest.raises(pydantic.ValidationError, match="gpuMemoryUtilization"):
        _spec("m", 1, gpuMemoryUtilization=1.5)
