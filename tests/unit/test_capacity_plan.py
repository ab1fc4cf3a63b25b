"""The size model of each stage (plan/sizing.py), measured sizes (modelinfo.model_size) and the capacity plan
(plan/fit.py, `synpo plan --capacity`): the cluster examples fit; a pod that cannot hold what it loads is refused
at plan time and by the operator, naming the stage, the resource and both numbers."""

from __future__ import annotations

import copy
import json
import struct

import pytest
import yaml

from synpo_operator.api.loader import parse_resource
from synpo_operator.executors.jobs import jobs_spec_problems
from synpo_operator.modelinfo import capacity_problems, model_size
from synpo_operator.plan import stage_graph
from synpo_operator.plan.fit import describe_capacity
from synpo_operator.plan.sizing import GIB, PROCESS_OVERHEAD, config_parameters, name_estimate, stage_needs

from .conftest import ROOT
from .test_cli_plan import run_cli

EXAMPLE_8B = yaml.safe_load((ROOT / "examples" / "cluster-llama3.yaml").read_text())
EXAMPLE_70B = yaml.safe_load((ROOT / "examples" / "cluster-llama3-70b.yaml").read_text())

# The real configs (config.json of the hub checkpoints; dimensions only) and their index total_size.
LLAMA3_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
             "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False,
             "torch_dtype": "bfloat16", "max_position_embeddings": 8192, "rope_theta": 500000.0}
LLAMA31_70B = {**LLAMA3_8B, "hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64,
               "num_hidden_layers": 80, "max_position_embeddings": 131072}
ARMORM = {**LLAMA3_8B, "architectures": ["LlamaForRewardModelWithGating"], "num_objectives": 19,
          "auto_map": {"AutoModelForSequenceClassification": "modeling_custom.LlamaForRewardModelWithGating"}}
LLAMA3_8B_TOTAL = 16_060_522_496  # model.safetensors.index.json metadata.total_size of Meta-Llama-3-8B


def run_of(doc, edit=None):
    doc = copy.deepcopy(doc)
    if edit:
        edit(doc["spec"])
    return parse_resource(doc)


def checkpoint(tmp_path, name, config, index_total=None, weights=None):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    if index_total is not None:
        (d / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": index_total}, "weight_map": {}}))
    if weights is not None:  # a real (tiny) safetensors file: 8-byte header length, JSON header, data
        header = json.dumps({"w": {"dtype": "BF16", "shape": [weights // 2], "data_offsets": [0, weights]}}).encode()
        (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(weights))
    return str(d)


def test_parameter_counts_from_real_configs():
    assert config_parameters(LLAMA3_8B) == 8_030_261_248 == LLAMA3_8B_TOTAL // 2
    assert config_parameters(LLAMA31_70B) == 70_553_706_496  # the hub's 141,107,412,992-byte index / 2
    assert config_parameters({"model_type": "llama"}) is None


def test_measured_from_the_checkpoint_before_the_name(tmp_path):
    # a local checkpoint is measured from its files: the index first, then the weight files, then config.json
    indexed = checkpoint(tmp_path, "Meta-Llama-3-8B", LLAMA3_8B, index_total=LLAMA3_8B_TOTAL)
    assert model_size(indexed).bytes == LLAMA3_8B_TOTAL and model_size(indexed).measured
    files = checkpoint(tmp_path, "tiny", LLAMA3_8B, weights=4096)
    size = model_size(files)
    assert size.measured and 4096 < size.bytes < 4096 + 200 and "safetensors" in size.source
    config_only = checkpoint(tmp_path, "llama-70b-no-weights", LLAMA31_70B)
    assert model_size(config_only).bytes == 2 * 70_553_706_496 and "config.json" in model_size(config_only).source
    # a hub id or an object-store URI cannot be read here: its name is the last resort, stated as an estimate
    hub = model_size("meta-llama/Llama-3.1-70B-Instruct")
    assert hub.bytes == 140_000_000_000 and not hub.measured and "name" in hub.source
    assert model_size("s3://models/my-finetune/") is None
    assert name_estimate("RLHFlow/ArmoRM-Llama3-8B-v0.1").bytes == 16_000_000_000


def test_each_stage_sizes_every_model_it_loads(tmp_path):
    base = checkpoint(tmp_path, "m0", LLAMA3_8B, index_total=LLAMA3_8B_TOTAL)
    scorer = checkpoint(tmp_path, "armorm", ARMORM)

    def edit(spec):
        spec["model"]["base"] = base
        spec["filter"]["scorer"]["model"] = scorer
        spec["evaluation"]["judges"][1]["model"] = scorer
        spec["storage"] = {"uri": "s3://bucket/runs"}  # the run's own models are fetched from the bucket

    run = run_of(EXAMPLE_8B, edit)
    needs = {n.key: stage_needs(run.spec, n, model_size) for n in stage_graph(run.spec)}
    w = LLAMA3_8B_TOTAL
    roles = {k: {m.role for m in v.models} for k, v in needs.items()}
    assert roles["i0-evaluate"] == {"policy", "judge-1"}  # the openai judge loads nothing
    assert roles["i2-improver"] == {"base", "policy", "scorer"}
    assert roles["i1-pairs"] == {"scorer"} and roles["i0-keywords"] == set()
    assert all(m.size.measured for v in needs.values() for m in v.models)
    # local checkpoints are read in place; M1 (iter-1/train/model) comes from the bucket into /cache
    assert needs["i0-evaluate"].cache == 2 * GIB
    # 8 GPU processes: FSDP upcasts the bf16 weights, so the run's own models and checkpoints are float32 (2w)
    assert needs["i2-improver"].cache == 2 * GIB + 2 * w + 9 * 2 * w  # M1 + resume checkpoints
    assert needs["i1-train"].output == 2 * w
    # host memory of a training pod: float32 weights + 2 moments at rank 0's checkpoint save + 8 processes
    assert needs["i1-train"].memory == 3 * 2 * w + 8 * PROCESS_OVERHEAD
    # an inference pod holds one model at a time: the largest (ArmoRM's config counts the 8B trunk)
    assert needs["i0-evaluate"].memory == max(w, 2 * config_parameters(ARMORM)) + 8 * PROCESS_OVERHEAD
    assert needs["i1-evaluate"].memory == 2 * w + 8 * PROCESS_OVERHEAD  # M1, saved in float32
    dpo = run_of(EXAMPLE_8B, lambda s: (edit(s), s["training"].update(loss="dpo", beta=0.1)))
    train = stage_needs(dpo.spec, next(n for n in stage_graph(dpo.spec) if n.key == "i1-train"), model_size)
    assert {m.role for m in train.models} == {"base", "reference"}
    # the reference is on the GPUs, sharded, before training: rank 0's peak is still the save (3·P)
    assert train.memory == 3 * 2 * w + 8 * PROCESS_OVERHEAD and train.cache == 2 * GIB + 9 * 2 * w  # no files
    cpu = {loss: run_of(EXAMPLE_8B, lambda s, loss=loss: (
        edit(s), s["training"].update(loss=loss, beta=0.1),
        s["resources"].update(gpusPerPod=0, training={"nodes": 1}, generation={"gpusPerPod": 0})))
        for loss in ("simpo", "dpo")}
    cpu_train = {loss: stage_needs(r.spec, next(n for n in stage_graph(r.spec) if n.key == "i1-train"), model_size)
                 for loss, r in cpu.items()}
    assert cpu_train["dpo"].memory - cpu_train["simpo"].memory == w  # a CPU process keeps the reference whole
    one_gpu = run_of(EXAMPLE_8B, lambda s: (edit(s), s["resources"].update(gpusPerPod=1, training={"nodes": 1},
                                                                            generation={"gpusPerPod": 1})))
    train = stage_needs(one_gpu.spec, next(n for n in stage_graph(one_gpu.spec) if n.key == "i1-train"), model_size)
    assert train.memory == 3 * w + PROCESS_OVERHEAD and train.output == w  # one bf16 process: no upcast


@pytest.mark.parametrize("example, memory", [("cluster-llama3.yaml", "113 GiB of 512 GiB"),
                                             ("cluster-llama3-70b.yaml", "806 GiB of 1000 GiB")])
def test_the_cluster_examples_fit(example, memory):
    done = run_cli("plan", f"examples/{example}", "--capacity")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.rstrip().endswith("every stage fits") and "NO " not in out
    train = next(line for line in out.splitlines() if line.startswith("ok i1-train "))
    assert f"memory {memory}" in train
    assert "judge-1: RLHFlow/ArmoRM-Llama3-8B-v0.1" in out or "judge-0: RLHFlow/ArmoRM-Llama3-8B-v0.1" in out
    assert "estimated: from the name" in out  # hub ids: nothing can be downloaded to measure them


def test_a_model_cache_too_small_is_refused_naming_stage_and_resource(tmp_path):
    doc = copy.deepcopy(EXAMPLE_8B)
    doc["spec"]["storage"]["modelCache"]["size"] = "10Gi"
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    done = run_cli("plan", str(path))
    assert done.returncode != 0
    assert "spec.storage.modelCache.size: stages i0-prompt-generator, i0-evaluate" in done.stderr
    assert "model cache needs up to 32 GiB per pod, more than the 10 GiB it gives" in done.stderr
    capacity = run_cli("plan", str(path), "--capacity")
    assert "NO i0-evaluate" in capacity.stdout and "model cache 32 GiB of 10 GiB DOES NOT FIT" in capacity.stdout


def test_too_little_memory_for_the_70b_is_refused_at_plan_time_and_by_the_operator(tmp_path):
    run = run_of(EXAMPLE_70B, lambda s: s["resources"].update(memory="256Gi"))
    (problem,) = capacity_problems(run.spec)
    assert problem.startswith("spec.resources.memory: stages i0-prompt-generator, i1-prompts, i1-improver, i1-refine "
                              "and 20 more: memory needs up to 806 GiB per pod, more than the 256 GiB it gives")
    assert problem in jobs_spec_problems(run)  # the operator: InvalidSpec before any Job (test_reconcile)
    text = describe_capacity(run.spec, model_size)
    assert "NO i0-prompt-generator [training, 4 x 8 GPU]: memory 806 GiB of 256 GiB DOES NOT FIT" in text
    assert "ok i1-base-responses" in text  # 131 GiB of bf16 weights + 8 x 3 GiB fit in 256Gi
    assert "NO i2-responses" in text  # M1 is float32: 261 GiB + 8 x 3 GiB do not


def test_explicit_ephemeral_storage_too_small_is_refused():
    # without the shared cache a 70B training pod holds the base model, the ArmoRM scorer, 9x the weights of
    # resume checkpoints in /cache and the finished model in /tmp
    run = run_of(EXAMPLE_70B, lambda s: (s["storage"].pop("modelCache"),
                                          s["resources"].update(ephemeralStorage="200Gi")))
    problems = capacity_problems(run.spec)
    assert any(p.startswith("spec.resources.ephemeralStorage: stages i0-prompt-generator") and
               "ephemeral-storage needs up to 3016 GiB per pod, more than the 200 GiB it gives" in p
               for p in problems), problems


def test_unknown_sizes_check_nothing():
    run = run_of(EXAMPLE_8B, lambda s: (s["model"].update(base="s3://models/my-finetune/"),
                                         s["resources"].update(memory="2Gi")))
    (problem,) = capacity_problems(run.spec)  # only the stages that load nothing but the (named) ArmoRM scorer
    assert problem.startswith("spec.resources.memory: stages i1-pairs, i2-pairs, i3-pairs, i4-pairs: memory")
    text = describe_capacity(run.spec, model_size)
    assert "base: s3://models/my-finetune/: size unknown" in text
    assert "ok i1-train [training, 1 x 8 GPU]: memory ? of 2.0 GiB; ephemeral-storage ? of unset" in text


def test_rendered_cache_is_sized_from_a_measured_checkpoint(tmp_path):
    from synpo_operator.executors.manifests import render_stage

    base = checkpoint(tmp_path, "my-checkpoint", LLAMA3_8B, index_total=LLAMA3_8B_TOTAL)  # no size in its name
    run = run_of(EXAMPLE_8B, lambda s: (s["model"].update(base=base), s["storage"].update(
        {"uri": "s3://bucket/runs", "volume": None, "modelCache": None})))
    job = render_stage(run, next(n for n in stage_graph(run.spec) if n.key == "i1-prompts"))
    cache = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "cache")
    # the prompt generator (float32 after 8-process FSDP) fetched from the bucket + 2 GiB
    assert cache["emptyDir"]["sizeLimit"] == f"{-(-(2 * GIB + 2 * LLAMA3_8B_TOTAL) // GIB)}Gi" == "32Gi"


def test_capacity_needs_a_run():
    done = run_cli("plan", "examples/schedule-weekly.yaml", "--capacity")
    assert done.returncode == 2 and "kind: --capacity needs a SynPORun" in done.stderr
