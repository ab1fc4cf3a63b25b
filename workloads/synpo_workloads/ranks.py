"""Generation on every rank of a training stage under torchrun (the improver's answers before its SFT): the
prompts are split between the ranks, each generating rank runs its own engine on its own GPUs, and every rank
gets all outputs back in prompt order (a gloo all-gather), so no GPU of a JobSet waits while rank 0 writes.

A generating rank is the first of each group of `tensorParallelSize` ranks on a node (when that divides the
node's processes; else one per node with all of its GPUs): its engine runs in a child process on those GPUs
(engines/parallel.py), so the rank's own process never starts CUDA for generation and the training that follows
finds its GPU free. The other ranks of the group lend it their GPUs and generate nothing. Prompt i keeps seed
`seed + i` whichever rank generates it.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from .engines import Prompt, SamplingParams
from .engines.parallel import EngineProcesses, gather, shard_bounds, visible_devices

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where this process stands among the training processes (torchrun's variables)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @classmethod
    def from_env(cls) -> Layout:
        env = os.environ
        world = int(env.get("WORLD_SIZE", "1"))
        return cls(int(env.get("RANK", "0")), world, int(env.get("LOCAL_RANK", "0")),
                   int(env.get("LOCAL_WORLD_SIZE", str(world))))

    def engine_size(self, tensor_parallel_size: int) -> int:
        """Ranks (GPUs) per engine: the tensor-parallel size when it divides the node's processes, else all."""
        tp = max(1, tensor_parallel_size)
        return tp if self.local_world % tp == 0 else self.local_world

    def generator(self, tensor_parallel_size: int) -> tuple[int | None, int]:
        """(this rank's index among the generating ranks or None, how many there are)."""
        size = self.engine_size(tensor_parallel_size)
        count = self.world // size
        return (self.rank // size if self.local_rank % size == 0 else None), count


def generate_on_every_rank(prompts: list[Prompt], params: SamplingParams, *, engine: dict, gpus: int,
                           tensor_parallel_size: int, layout: Layout | None = None) -> list[str]:
    """Every rank's share of `prompts` generated where it runs, all outputs on every rank in prompt order.
    `engine`: make_engine's arguments (name, model_ref, dtype, ...); `gpus`: this pod's GPUs (0: the CPU)."""
    import torch.distributed as dist

    from . import training

    layout = layout or Layout.from_env()
    index, count = layout.generator(tensor_parallel_size if gpus else 1)
    size = layout.engine_size(tensor_parallel_size) if gpus else 0
    mine: list[str] = []
    if index is not None:
        start, end = shard_bounds(len(prompts), count)[index]
        log.info("generating prompts %d-%d of %d on rank %d (engine %d of %d, %d GPUs)", start, end, len(prompts),
                 layout.rank, index, count, size)
        if end > start:
            devices = visible_devices(layout.local_world)[layout.local_rank:layout.local_rank + size] if gpus else []
            processes = EngineProcesses([devices], **engine)
            try:
                mine = processes.generate(prompts[start:end], dataclasses.replace(params, seed=params.seed + start))
            finally:
                processes.close()
    training.wait_for_rank_zero()  # starts the process group (gloo for objects) once every rank is done
    shards: list = [None] * layout.world
    dist.all_gather_object(shards, (index, mine))
    outputs = gather([out for _, out in sorted((i, out) for i, out in shards if i is not None)])
    if len(outputs) != len(prompts):
        raise RuntimeError(f"every-rank generation returned {len(outputs)} outputs for {len(prompts)} prompts")
    return outputs
