"""One training process of test_fsdp_loading (run under `torchrun`, gloo on the CPU): load the model to train
the way the train stage does, shard it with accelerate's FSDP2 preparation (the code the Trainer runs on GPUs,
with the train stage's fsdp_config), and report this process's resident-memory growth over loading and
sharding, plus a checksum of the sharded weights gathered back.

    torchrun --nproc-per-node=2 tests/workloads/fsdp_rss_probe.py MODEL_DIR OUT_DIR [--before]

--before: the old way, for the before/after figures: from_pretrained in every process, and FSDP without
cpu_ram_efficient_loading.
"""

from __future__ import annotations

import json
import os
import sys


def _rss_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def main() -> None:
    model_dir, out_dir = sys.argv[1], sys.argv[2]
    old = "--before" in sys.argv
    import torch
    import torch.distributed as dist
    from accelerate import Accelerator
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model
    from transformers import TrainingArguments

    from synpo_workloads import training

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    # The train stage's FSDP settings, as the Trainer turns them into accelerate's plugin. On the CPU accelerate
    # never picks FSDP itself (it only does on accelerators), so the plugin is handed to it here.
    args = TrainingArguments(output_dir=out_dir, use_cpu=True, report_to="none",
                             **training.sharding(gpu=True, world=dist.get_world_size(), checkpointing=False))
    plugin = FullyShardedDataParallelPlugin(**{**args.fsdp_plugin_args,
                                               **({"cpu_ram_efficient_loading": False} if old else {})})
    accelerator = Accelerator(cpu=True)
    accelerator.state.fsdp_plugin = plugin
    dist.barrier()

    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # resets the peak (VmHWM) to the current resident size: imports are not counted
    start = _rss_kib("VmRSS")
    model = training.load_trained_model(model_dir, "float32", sharded=not old)
    model = fsdp2_prepare_model(accelerator, model)
    peak = _rss_kib("VmHWM")
    weights = {name: p.detach().full_tensor() for name, p in model.named_parameters()}  # all-gathers every shard
    checksum = float(sum(w.double().sum() for w in weights.values()))
    doc = {"rank": rank, "growthBytes": (peak - start) * 1024, "checksum": checksum,
           "sharded": type(model).__name__.startswith("FSDP")}
    with open(os.path.join(out_dir, f"rank-{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
