"""One training process of test_fsdp_loading (run under `torchrun`, gloo on the CPU): load the model to train and
DPO's reference the way the train stage does, and report this process's resident-memory growth over each, plus
checksums of the sharded weights gathered back.

    torchrun --nproc-per-node=2 tests/workloads/fsdp_rss_probe.py MODEL_DIR OUT_DIR [--before]

In the train stage's order: the policy is loaded, the DPO trainer is built (TRL's DPOTrainer with the train
stage's DPOConfig and fsdp_config; it prepares the reference), then the policy is sharded as Trainer.train does
(accelerate's FSDP2 preparation). On the CPU accelerate never picks FSDP itself (it only does on accelerators),
so the train stage's plugin is handed to it here.

--before: the old way, for the before/after figures: from_pretrained of both models in every process, FSDP
without cpu_ram_efficient_loading, and TRL preparing the reference itself.
"""

from __future__ import annotations

import json
import os
import sys


def _kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak() -> int:
    """Resets the peak (VmHWM) to the current resident size; returns that size in bytes."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")
    return _kib("VmRSS") * 1024


def _checksum(model) -> float:
    """Before any forward: FSDP leaves the last layers unsharded after one (reshard_after_forward False)."""
    return float(sum(p.detach().full_tensor().double().sum() for p in model.parameters()))  # all-gathers shards


def main() -> None:
    model_dir, out_dir = sys.argv[1], sys.argv[2]
    old = "--before" in sys.argv
    import torch
    import torch.distributed as dist
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model
    from datasets import Dataset
    from torch.distributed.fsdp import FSDPModule
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from synpo_workloads import training

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    fsdp = training.sharding(gpu=True, world=dist.get_world_size(), checkpointing=False)
    if old:
        fsdp["fsdp_config"]["cpu_ram_efficient_loading"] = False
    args = DPOConfig(output_dir=out_dir, use_cpu=True, report_to="none", per_device_train_batch_size=1,
                     max_length=64, **fsdp)

    class CpuFsdpDPOTrainer(DPOTrainer):
        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            self.accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
            self.is_fsdp_enabled = True

    trainer_class = CpuFsdpDPOTrainer if old else training.sharded_reference_dpo_trainer(CpuFsdpDPOTrainer)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pairs = Dataset.from_list([{"prompt": "What is 2+2?", "chosen": " 4", "rejected": " 5"}] * 2)
    dist.barrier()

    start = _reset_peak()  # imports are not counted
    policy = training.load_trained_model(model_dir, "float32", sharded=not old)
    policy_load = _kib("VmRSS") * 1024 - start
    before_reference = _reset_peak()
    reference = training.load_reference_model(model_dir, "float32", sharded=not old)
    trainer = trainer_class(model=policy, ref_model=reference, args=args, train_dataset=pairs,
                            processing_class=tokenizer)
    reference_peak = _kib("VmHWM") * 1024
    before_policy = _reset_peak()
    policy = fsdp2_prepare_model(trainer.accelerator, policy)  # what Trainer.train does under FSDP2
    policy_peak = _kib("VmHWM") * 1024

    checksums = {"policyChecksum": _checksum(policy), "referenceChecksum": _checksum(trainer.ref_model)}
    # TRL's reference forward (fused LM head, under no_grad) on the sharded reference gives the policy's log-probs:
    # the same checkpoint
    batch = tokenizer(["What is 2+2? 4"], return_tensors="pt")
    with torch.no_grad():
        ref_logps = trainer.ref_model(**batch, labels=batch["input_ids"], fused_lm_head=True).log_probs
        policy_logps = policy(**batch, labels=batch["input_ids"], fused_lm_head=True).log_probs
    ref = trainer.ref_model
    doc = {"rank": rank,
           "policyGrowthBytes": policy_load + policy_peak - before_policy,
           "referenceGrowthBytes": reference_peak - before_reference,
           "growthBytes": max(reference_peak, policy_peak) - start,
           **checksums,
           "sharded": isinstance(policy, FSDPModule) and isinstance(ref, FSDPModule),
           "referenceIsOurs": ref is reference,
           "referenceFsdpUnits": sum(isinstance(m, FSDPModule) for m in ref.modules()),
           "referenceFrozen": not any(p.requires_grad for p in ref.parameters()),
           "logpsMaxDiff": float((ref_logps - policy_logps).abs().max())}
    with open(os.path.join(out_dir, f"rank-{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
