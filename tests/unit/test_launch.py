"""The stage command every executor runs (plan/launch.py), and the global-batch rule (plan/resources.py)."""

from __future__ import annotations

import pytest

from synpo_operator.api.parallelism import global_batch_problem
from synpo_operator.executors.manifests import render_job
from synpo_operator.plan.launch import distributed_env, launch_command
from synpo_operator.plan.resources import PodShape, global_batch_problems, pod_shape

from .test_manifests import container, node_of, run_of

CONFIG = "/etc/synpo/stage.json"
PROGRAM = ["-m", "synpo_workloads", "train", "--config", CONFIG]


@pytest.mark.parametrize("shape, command", [
    (PodShape("generation", 8, None, None), ["python", *PROGRAM]),  # vLLM: one process, tensor parallel
    (PodShape("training", 1, None, None), ["python", *PROGRAM]),
    (PodShape("training", 0, None, None), ["python", *PROGRAM]),
    (PodShape("training", 8, None, None), ["torchrun", "--nproc-per-node=8", "--standalone", *PROGRAM]),
    (PodShape("training", 8, None, None, nodes=2), ["torchrun", "--nproc-per-node=8", *PROGRAM]),
    (PodShape("training", 0, None, None, nodes=2), ["torchrun", "--nproc-per-node=1", *PROGRAM]),
])
def test_launch_command(shape, command):
    assert launch_command(shape, "train", CONFIG) == command


def test_distributed_env_only_for_several_nodes():
    two = PodShape("training", 8, None, None, nodes=2)
    assert distributed_env(two, master_addr="run-node-0-0.run", master_port=29500, node_rank="1") == {
        "PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "run-node-0-0.run", "PET_MASTER_PORT": "29500"}
    assert "PET_NODE_RANK" not in distributed_env(two, master_addr="a", master_port=1, node_rank=None)
    one = PodShape("training", 8, None, None)
    assert distributed_env(one, master_addr="a", master_port=1, node_rank="0") == {}


def test_jobs_run_training_under_torchrun_on_every_gpu():
    run = run_of()  # examples/cluster-llama3.yaml: training 1 x 8 GPUs, generation 8 GPUs
    train = container(render_job(run, node_of(run, "i1-train")))
    assert train["command"] == ["torchrun", "--nproc-per-node=8", "--standalone", "-m", "synpo_workloads", "train",
                                "--config", CONFIG]
    assert train["resources"]["limits"]["nvidia.com/gpu"] == "8"
    refine = container(render_job(run, node_of(run, "i1-refine")))
    assert refine["command"][:3] == ["python", "-m", "synpo_workloads"]
    assert refine["resources"]["limits"]["nvidia.com/gpu"] == "8"  # vLLM tensor parallel 8
    pairs = container(render_job(run, node_of(run, "i1-pairs")))
    assert pairs["resources"]["limits"]["nvidia.com/gpu"] == "1" and pairs["command"][0] == "python"
    assert pod_shape(run.spec, node_of(run, "i0-prompt-generator")).world_size == 8
    assert global_batch_problems(run.spec) == []


def test_global_batch_must_split_across_training_processes():
    assert global_batch_problem(128, 16, "f") is None
    assert global_batch_problem(4, 8, "spec.training.batchSize") == (
        "spec.training.batchSize: the global batch of 4 is split evenly across the 8 training processes "
        "(resources.training nodes x gpusPerNode), so it must be a multiple of 8; use e.g. 8, or fewer processes")
    assert "use e.g. 96, 104" in global_batch_problem(100, 8, "f")
    run = run_of(resources={"gpusPerPod": 8, "training": {"nodes": 2, "gpusPerNode": 4}},
                 promptGenerator={"batchSize": 4}, improver={"batchSize": 12}, training={"batchSize": 64})
    problems = global_batch_problems(run.spec)
    assert [p.split(":")[0] for p in problems] == ["spec.promptGenerator.batchSize", "spec.improver.batchSize"]
    # CPU training processes count too: one per node
    cpu = run_of(resources={"gpusPerPod": 0, "training": {"nodes": 3}})
    assert len(global_batch_problems(cpu.spec)) == 3  # 32, 32 and 128 do not split in 3
