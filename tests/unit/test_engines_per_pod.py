"""How a generation pod's GPUs are split between engines (plan/engines.py): generation.tensorParallelSize, its
default from the model's size, its checks, and what the stage config carries."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from synpo_operator.api.loader import SpecError, parse_resource
from synpo_operator.modelinfo import model_problems
from synpo_operator.plan import stage_graph
from synpo_operator.plan.engines import tensor_parallel_size
from synpo_operator.plan.stage_config import stage_config
from synpo_operator.render import describe_plan

from .conftest import ROOT

EXAMPLE = yaml.safe_load((ROOT / "examples" / "cluster-llama3.yaml").read_text())
EXAMPLE_70B = yaml.safe_load((ROOT / "examples" / "cluster-llama3-70b.yaml").read_text())


def run_of(doc, model=None, **generation):
    doc = copy.deepcopy(doc)
    doc["spec"]["generation"].update(generation)
    if model:
        doc["spec"]["model"]["base"] = model
    return parse_resource(doc, "run.yaml")


def configs(run):
    return {n.key: stage_config(run.spec, n, namespace="ns", run="r", storage_root="/s") for n in stage_graph(run.spec)}


@pytest.mark.parametrize("doc, tp", [(EXAMPLE, 1), (EXAMPLE_70B, 4)])
def test_default_is_the_fewest_gpus_that_hold_the_model(doc, tp):
    """8B (16 GB of bf16 weights) fits one GPU: 8 engines on an 8-GPU pod, not TP 8; 70B (140 GB): TP 4."""
    run = parse_resource(doc)
    assert tensor_parallel_size(run.spec) == tp
    for key, config in configs(run).items():
        if key.split("-", 1)[1] in ("prompts", "base-responses", "responses", "refine", "evaluate"):
            assert (config["gpus"], config["tensorParallelSize"]) == (8, tp)
    assert f"8 gpu: {8 // tp} engine(s) x tensor parallel {tp}" in describe_plan(run)


def test_unknown_size_keeps_every_gpu_in_one_engine_and_cpu_pods_one():
    assert tensor_parallel_size(run_of(EXAMPLE, model="org/some-model").spec) == 8
    cpu = copy.deepcopy(EXAMPLE)
    cpu["spec"]["resources"].update(gpusPerPod=0, generation={"gpusPerPod": 0})
    assert tensor_parallel_size(parse_resource(cpu).spec) == 1


def test_the_field_wins_and_must_divide_the_pods_gpus():
    assert tensor_parallel_size(run_of(EXAMPLE, tensorParallelSize=2).spec) == 2
    with pytest.raises(SpecError) as err:
        run_of(EXAMPLE, tensorParallelSize=3)
    (problem,) = err.value.problems
    assert problem.startswith("spec: generation.tensorParallelSize: 3 does not divide the 8 GPUs") and \
        "use one of 1, 2, 4, 8" in problem
    with pytest.raises(SpecError, match="spec.generation.tensorParallelSize"):
        run_of(EXAMPLE, tensorParallelSize=0)


def test_heads_must_divide_the_engine_size(tmp_path):
    model = tmp_path / "Tiny-70B"  # its name says 70B: 140 GB, so TP 4 would be the default
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "num_attention_heads": 6}))
    run = run_of(EXAMPLE, model=str(model))
    # plan time: 4 does not divide 6 heads and 8 GPUs leave no size that does and holds the model
    (problem,) = model_problems(run.spec)
    assert problem.startswith("spec.resources.generation.gpusPerPod:") and "6 attention heads" in problem
    (problem,) = model_problems(run_of(EXAMPLE, model=str(model), tensorParallelSize=4).spec)
    assert problem.startswith("spec.generation.tensorParallelSize:")
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "num_attention_heads": 64}))
    assert model_problems(run.spec) == [] and tensor_parallel_size(run.spec, heads=64) == 4
