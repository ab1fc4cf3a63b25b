"""Shapes per kind of stage (plan/resources.pod_shape, rendered by executors/manifests.py): CPU stages small and
off the GPU nodes, a GPU pod's CPU and memory its GPU share of the node unless set."""

from __future__ import annotations

import copy
from fractions import Fraction

import pytest
import yaml

from synpo_operator.api.loader import parse_resource
from synpo_operator.executors.manifests import render_job, render_stage
from synpo_operator.plan import stage_graph
from synpo_operator.plan.quantity import parse_quantity, share
from synpo_operator.plan.resources import node_gpus, pod_shape, stage_kind

from .conftest import ROOT

EXAMPLE = yaml.safe_load((ROOT / "examples" / "cluster-llama3.yaml").read_text())
EXAMPLE_70B = yaml.safe_load((ROOT / "examples" / "cluster-llama3-70b.yaml").read_text())


def run_of(doc, **resources):
    doc = copy.deepcopy(doc)
    doc["spec"]["resources"].update(resources)
    return parse_resource(doc)


def pod(run, key):
    node = next(n for n in stage_graph(run.spec) if n.key == key)
    return render_job(run, node)["spec"]["template"]["spec"]


def pods_by_kind(run):
    return {node.key: (stage_kind(node), render_stage(run, node)) for node in stage_graph(run.spec)}


def test_cpu_stages_are_small_and_off_the_gpu_nodes():
    run = run_of(EXAMPLE)
    keywords = pod(run, "i0-keywords")
    c = keywords["containers"][0]
    assert c["resources"] == {"limits": {"cpu": "2", "memory": "8Gi"}, "requests": {"cpu": "2", "memory": "8Gi"}}
    # no model cache on local disk either: a CPU stage loads none of the run's models (70B: no 263Gi request)
    big = parse_resource(EXAMPLE_70B)
    assert pod(big, "i0-keywords")["containers"][0]["resources"]["requests"] == {"cpu": "2", "memory": "8Gi"}
    cache = {v["name"]: v for v in pod(big, "i0-keywords")["volumes"]}["cache"]  # the example's shared PVC
    assert "sizeLimit" not in cache.get("emptyDir", {}) and cache.get("persistentVolumeClaim", {}).get("claimName")
    # the example's H100 nodeSelector and GPU toleration are for GPU stages only
    assert "nodeSelector" not in keywords and "tolerations" not in keywords and "affinity" not in keywords
    assert "/dev/shm" not in {m["mountPath"] for m in c["volumeMounts"]}
    gpu_pod = pod(run, "i1-train")
    assert gpu_pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert gpu_pod["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_cpu_stages_have_their_own_shape_and_placement():
    run = run_of(EXAMPLE, cpuStages={"cpu": "500m", "memory": "2Gi", "nodeSelector": {"pool": "cpu"},
                                     "tolerations": [{"key": "pool", "value": "cpu", "effect": "NoSchedule"}]},
                 affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                     {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]}}})
    keywords = pod(run, "i0-keywords")
    assert keywords["containers"][0]["resources"]["limits"] == {"cpu": "500m", "memory": "2Gi"}
    assert keywords["nodeSelector"] == {"pool": "cpu"}
    assert keywords["tolerations"] == [{"key": "pool", "operator": "Equal", "value": "cpu", "effect": "NoSchedule"}]
    assert "affinity" not in keywords and "affinity" in pod(run, "i1-refine")
    # a similarity scorer needs no GPU: its pairs stage is a CPU stage too
    doc = copy.deepcopy(EXAMPLE)
    doc["spec"]["filter"]["scorer"] = {"type": "similarity"}
    similarity = parse_resource(doc)
    assert pod(similarity, "i1-pairs")["containers"][0]["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}
    with pytest.raises(ValueError, match="cpuStages.cpu"):
        run_of(EXAMPLE, cpuStages={"cpu": "two"})
    with pytest.raises(ValueError, match="cpuStages.nodeSelector"):
        run_of(EXAMPLE, cpuStages={"nodeSelector": {"bad key!": "x"}})


@pytest.mark.parametrize("doc, scorer", [(EXAMPLE, {"cpu": "4", "memory": "64Gi"}),            # 32, 512Gi / 8
                                         (EXAMPLE_70B, {"cpu": "8", "memory": "125Gi"})])      # 64, 1000Gi / 8
def test_a_scorer_gets_its_gpu_share_of_the_node(doc, scorer):
    run = parse_resource(doc)
    assert node_gpus(run.spec) == 8
    limits = pod(run, "i1-pairs")["containers"][0]["resources"]["limits"]
    assert limits == {**scorer, "nvidia.com/gpu": "1"}
    whole = {k: doc["spec"]["resources"][k] for k in ("cpu", "memory")}
    for key in ("i1-train", "i1-refine", "i1-evaluate"):  # 8 of 8 GPUs: the whole node
        assert {k: v for k, v in pod(run, key)["containers"][0]["resources"]["limits"].items()
                if k in whole} == whole
    # set on the kind: as written
    run = run_of(doc, scoring={"gpusPerPod": 1, "cpu": "12", "memory": "100Gi"})
    assert pod(run, "i1-pairs")["containers"][0]["resources"]["limits"] == {
        "cpu": "12", "memory": "100Gi", "nvidia.com/gpu": "1"}


def test_no_pod_asks_for_more_than_a_node_of_the_example_has():
    """Every pod of every stage fits an 8-GPU node with the example's CPU and memory, and the GPU pods of one
    node's worth (8 GPUs) never together ask for more CPU or memory than it has."""
    for doc in (EXAMPLE, EXAMPLE_70B):
        run = parse_resource(doc)
        node_cpu = parse_quantity(doc["spec"]["resources"]["cpu"])
        node_memory = parse_quantity(doc["spec"]["resources"]["memory"])
        for node in stage_graph(run.spec):
            shape = pod_shape(run.spec, node)
            per_gpu = Fraction(1, 8)
            if shape.gpus:
                assert parse_quantity(shape.cpu) <= node_cpu * shape.gpus * per_gpu
                assert parse_quantity(shape.memory) <= node_memory * shape.gpus * per_gpu
            else:
                assert shape.kind == "cpu" and parse_quantity(shape.cpu) <= 4


@pytest.mark.parametrize("text, part, whole, memory, want", [
    ("32", 1, 8, False, "4"), ("1", 1, 8, False, "125m"), ("3", 1, 2, False, "1500m"), ("1", 1, 3, False, "334m"),
    ("512Gi", 1, 8, True, "64Gi"), ("10Gi", 1, 3, True, "3414Mi"), ("1000G", 1, 8, True, "119210Mi"),
    ("8Gi", 8, 8, True, "8Gi"), (None, 1, 8, True, None), ("7", 0, 0, False, "7"),
])
def test_share_of_a_quantity(text, part, whole, memory, want):
    assert share(text, part, whole, memory=memory) == want
