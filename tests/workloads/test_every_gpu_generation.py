"""Generation that uses every GPU: engines side by side in one pod (engines/parallel.py) and generation on every
rank of a torchrun training stage (ranks.py). On the CPU the engines are the transformers engine on a tiny
random Llama; the process fan-out, the sharding, the seeds and the gather are the same code that runs vLLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from synpo_workloads.engines import SamplingParams, make_engine
from synpo_workloads.engines.parallel import (
    EngineProcesses,
    device_groups,
    gather,
    shard_bounds,
    visible_devices,
)
from synpo_workloads.errors import ConfigError, ModelError
from synpo_workloads.ranks import Layout

PROMPTS = [f"Question {i}: name {'a ' * (i % 4)}colour." for i in range(7)]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=6, seed=11)


@pytest.mark.parametrize("n, parts", [(0, 1), (7, 1), (7, 2), (7, 3), (2, 4), (16, 8), (50_000, 8)])
def test_shards_cover_every_prompt_once_in_order(n, parts):
    bounds = shard_bounds(n, parts)
    assert len(bounds) == parts and bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    sizes = [e - s for s, e in bounds]
    assert max(sizes) - min(sizes) <= 1
    items = list(range(n))
    assert gather([items[s:e] for s, e in bounds]) == items


def test_device_groups_and_visible_devices(monkeypatch):
    assert device_groups([str(i) for i in range(8)], 1) == [[str(i)] for i in range(8)]
    assert device_groups([str(i) for i in range(8)], 4) == [["0", "1", "2", "3"], ["4", "5", "6", "7"]]
    with pytest.raises(ConfigError, match="spec.generation.tensorParallelSize: 3 does not divide the 8 GPUs"):
        device_groups([str(i) for i in range(8)], 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert visible_devices(4) == ["4", "5", "6", "7"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_devices(2) == ["0", "1"]


@pytest.mark.parametrize("world, local, tp, generators", [
    (32, 8, 1, list(range(32))),                       # an 8B model: every rank an engine
    (32, 8, 4, [r // 4 if r % 4 == 0 else None for r in range(32)]),   # 70B at TP 4: 8 engines over 4 nodes
    (16, 8, 8, [r // 8 if r % 8 == 0 else None for r in range(16)]),
    (8, 4, 8, [r // 4 if r % 4 == 0 else None for r in range(8)]),     # TP larger than a node: one per node
])
def test_which_ranks_generate(world, local, tp, generators):
    slots = [Layout(r, world, r % local, local).generator(tp) for r in range(world)]
    assert [s[0] for s in slots] == generators
    assert {s[1] for s in slots} == {len([g for g in generators if g is not None])}


def test_two_engine_processes_equal_one_engine(tiny_model):
    """Two engines, each in its own process, give the one in-process engine's outputs in prompt order."""
    one = make_engine("transformers", tiny_model, batch_size=1)
    try:
        expected = one.generate(PROMPTS, GREEDY)
    finally:
        one.close()
    two = EngineProcesses([[], []], name="transformers", model_ref=tiny_model, batch_size=1)
    try:
        assert len(set(two.pids)) == 2 and os.getpid() not in two.pids
        assert two.generate(PROMPTS, GREEDY) == expected
        assert two.last_stats["prompts"] == len(PROMPTS) and two.last_stats["engines"] == 2
        assert two.generate(PROMPTS[:1], GREEDY) == expected[:1]  # one engine gets no prompt
    finally:
        two.close()
    assert not two.workers


def test_a_pod_with_several_gpus_gets_one_engine_per_group(tiny_model, monkeypatch):
    """make_engine on a 2-GPU pod: the transformers engine (no tensor parallelism) runs one engine per GPU,
    each process seeing only its own (on this CPU machine the engines then run on the CPU)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "6,7")
    monkeypatch.setenv("RANK", "3")  # as under torchrun: the engines must not see it
    engines = make_engine("transformers", tiny_model, batch_size=1, gpus=2)
    try:
        assert isinstance(engines, EngineProcesses) and engines.groups == [["6"], ["7"]]
        assert engines.child_env == [{"CUDA_VISIBLE_DEVICES": "6", "torchrun": []},
                                     {"CUDA_VISIBLE_DEVICES": "7", "torchrun": []}]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "6,7" and os.environ["RANK"] == "3"  # ours are untouched
        assert len(engines.generate(PROMPTS, GREEDY)) == len(PROMPTS)
    finally:
        engines.close()


def test_an_engine_that_cannot_start_is_the_users_error(tmp_path):
    with pytest.raises(ModelError):
        EngineProcesses([[]], name="transformers", model_ref=str(tmp_path / "missing"), batch_size=1)


SCRIPT = textwrap.dedent("""
    import json, logging, os, sys
    from synpo_workloads.engines import SamplingParams
    from synpo_workloads.ranks import generate_on_every_rank
    if __name__ == "__main__":  # engine processes are spawned: they import this file again
        logging.basicConfig(level=logging.INFO)
        prompts, out = json.loads(sys.argv[2]), sys.argv[3]
        params = SamplingParams(temperature=0.0, max_new_tokens=6, seed=11)
        outputs = generate_on_every_rank(prompts, params, gpus=0, tensor_parallel_size=1,
                                         engine={"name": "transformers", "model_ref": sys.argv[1], "batch_size": 1})
        with open(f"{out}.{os.environ['RANK']}", "w") as f:
            json.dump(outputs, f)
""")


def test_every_rank_generates_its_share_under_torchrun(tiny_model, tmp_path):
    """torchrun, 2 processes over gloo: each rank generates its half (its log says which), and both ranks get
    all outputs, in order, equal to one engine's."""
    one = make_engine("transformers", tiny_model, batch_size=1)
    try:
        expected = one.generate(PROMPTS, GREEDY)
    finally:
        one.close()
    script = tmp_path / "every_rank.py"
    script.write_text(SCRIPT)
    out = tmp_path / "outputs"
    env = {**os.environ, "SYNPO_RANK0_WAIT_SECONDS": "300", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script), tiny_model, json.dumps(PROMPTS), str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    for rank in (0, 1):
        assert json.loads(Path(f"{out}.{rank}").read_text()) == expected, done.stderr[-4000:]
    assert "generating prompts 0-4 of 7 on rank 0 (engine 0 of 2" in done.stderr, done.stderr[-4000:]
    assert "generating prompts 4-7 of 7 on rank 1 (engine 1 of 2" in done.stderr, done.stderr[-4000:]
