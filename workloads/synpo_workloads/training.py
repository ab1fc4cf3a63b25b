"""Training with TRL: SFT (prompt generator, improver) and preference optimisation (SimPO, DPO).

Shared here: batch arithmetic, bf16 on GPUs that support it, checkpoints under `<output>/checkpoints` and
resume from the last one after a kill. Checkpoints are time-based — one after every step that ends at least
SYNPO_CHECKPOINT_MINUTES (default 10) after the previous one — so short runs pay nothing for them and long ones
lose at most ~10 minutes; env SYNPO_SAVE_STEPS (an int, or a ratio < 1 of the total) switches to step-based.
Several training processes (plan/launch.py: `torchrun`, one process per GPU, `nodes` pods): the Trainer picks
up torchrun's environment. Every batch size of the spec is the GLOBAL batch: each of the WORLD_SIZE processes
takes batchSize / WORLD_SIZE examples per optimizer step, in micro-batches of microBatchSize (default: the
largest divisor up to 8) with gradient accumulation making up the rest, so the optimizer sees the same examples
per step whatever the number of processes. On GPUs the model is fully sharded with FSDP2 (layers wrapped by the
model's own `_no_split_modules`, full state dicts so rank 0 alone writes checkpoints and the model; only rank 0
reads the weights, the others get their shards from it: `load_trained_model`, and DPO's reference likewise:
`sharded_reference_dpo_trainer`); on the CPU (gloo) plain data parallelism. Only rank 0 writes the model, the
manifest and the result (runtime.py).

Test hook: env SYNPO_FAULT_AFTER_STEP=N kills the process (exit 137, like SIGKILL) right after the checkpoint
of step ≥ N is written — a preemption at the worst moment, used by the resume tests; with SYNPO_FAULT_RANK=r
only the training process of rank r is killed (SIGKILL), while the others are mid-save or training on.
"""

from __future__ import annotations

import logging
import math
import os
import signal
from contextlib import contextmanager
from typing import Any

from . import checkpoints as durable
from . import models, progress

log = logging.getLogger(__name__)


def micro_batch(batch_size: int, micro: int | None, cap: int = 8) -> int:
    """Examples per device per step: as given, else the largest divisor of batch_size up to cap."""
    if micro:
        return min(micro, batch_size)
    return max(d for d in range(1, min(cap, batch_size) + 1) if batch_size % d == 0)


def per_device(batch_size: int, world_size: int = 1) -> int:
    """Examples each training process takes per optimizer step (the plan checks batch_size divides)."""
    return max(1, batch_size // max(1, world_size))


def accumulation(batch_size: int, micro: int, world_size: int = 1) -> int:
    return max(1, math.ceil(per_device(batch_size, world_size) / micro))


def total_steps(examples: int, batch_size: int, micro: int, epochs: float, world: int = 1) -> int:
    """Optimizer steps the Trainer will take (its own arithmetic: batches per epoch // accumulation)."""
    batches = math.ceil(examples / (micro * max(1, world)))
    per_epoch = max(batches // accumulation(batch_size, micro, world), 1)
    return math.ceil(epochs * per_epoch)


def warmup_steps(ratio: float, steps: int) -> int:
    """Warm-up steps, rounded down: the Trainer rounds a ratio up, so a 1-step run would spend its only step
    at learning rate 0 (quickstart-sized runs have only a few steps)."""
    return int(ratio * steps)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
                "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE")


@contextmanager
def alone():
    """Rank 0 working on its own before training (the improver's generation): the engine it starts (vLLM spawns
    workers and process groups of its own, across the pod's GPUs) sees a plain process, not torchrun's rank."""
    saved = {k: os.environ.pop(k) for k in TORCHRUN_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def wait_for_rank_zero() -> None:
    """A barrier of all training processes: the others wait here while rank 0 works alone, rank 0 calls it when
    done. It starts torch.distributed (the Trainer reuses it) with a CPU all-reduce over gloo, so the waiting
    processes take no GPU memory from rank 0's engine; the timeout bounds the wait (env
    SYNPO_RANK0_WAIT_SECONDS, default 6 h)."""
    if world_size() == 1:
        return
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        gpu = torch.cuda.is_available()
        if gpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        seconds = float(os.environ.get("SYNPO_RANK0_WAIT_SECONDS", 6 * 3600))
        dist.init_process_group("cuda:nccl,cpu:gloo" if gpu else "gloo", timeout=timedelta(seconds=seconds))
    dist.all_reduce(torch.zeros(1))


def save_policy() -> dict[str, Any]:
    """TrainingArguments for checkpointing: step-based when SYNPO_SAVE_STEPS is set, else time-based."""
    raw = os.environ.get("SYNPO_SAVE_STEPS")
    if raw:
        value = float(raw)
        return {"save_strategy": "steps", "save_steps": int(value) if value >= 1 else value}
    return {"save_strategy": "no"}  # TimedCheckpoints asks for saves


def _timed_checkpoints():
    import time

    from transformers import TrainerCallback

    interval = float(os.environ.get("SYNPO_CHECKPOINT_MINUTES", "10")) * 60

    class TimedCheckpoints(TrainerCallback):
        def __init__(self):
            self.last = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            # rank 0's clock decides for all: a save is collective (FSDP state dicts, the checkpoint upload)
            due = time.monotonic() - self.last >= interval and state.global_step < state.max_steps
            if durable.from_rank_zero(due):
                control.should_save = True
                self.last = time.monotonic()

    return TimedCheckpoints()


def last_checkpoint(checkpoints: str) -> str | None:
    """The newest complete checkpoint: its trainer_state.json, which rank 0 writes after the model, optimizer
    and RNG states, is there (a kill during a save leaves the previous one, kept by save_total_limit=2)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not os.path.isdir(checkpoints):
        return None
    steps = [int(name.rsplit("-", 1)[1]) for name in os.listdir(checkpoints)
             if name.startswith(PREFIX_CHECKPOINT_DIR + "-") and name.rsplit("-", 1)[1].isdigit()]
    for step in sorted(steps, reverse=True):
        path = os.path.join(checkpoints, f"{PREFIX_CHECKPOINT_DIR}-{step}")
        if os.path.isfile(os.path.join(path, "trainer_state.json")):
            return path
    return None


def callbacks(checkpoints: str | None = None) -> list:
    """The trainers' callbacks; the checkpoint uploader (object storage) before the fault hook, so a simulated
    kill comes after the checkpoint is committed."""
    upload = durable.trainer_callback(checkpoints) if checkpoints else None
    return [_timed_checkpoints(), progress.trainer_callback(), *([upload] if upload else []), *_fault_callback()]


def _fault_callback():
    from transformers import TrainerCallback

    limit = int(os.environ.get("SYNPO_FAULT_AFTER_STEP", "0") or 0)
    rank = os.environ.get("SYNPO_FAULT_RANK")

    class FaultAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if limit and state.global_step >= limit:
                log.warning("SYNPO_FAULT_AFTER_STEP=%d: simulated kill after step %d", limit, state.global_step)
                if rank is None:
                    os._exit(137)
                os.kill(os.getpid(), signal.SIGKILL)

    return [FaultAfterSave()] if limit and rank in (None, os.environ.get("RANK", "0")) else []


def fsdp_sharded() -> bool:
    """Whether training shards the model with FSDP: several processes on GPUs (see `sharding`)."""
    import torch

    return torch.cuda.is_available() and world_size() > 1


def load_trained_model(ref: str, dtype: str = "auto", *, sharded: bool | None = None):
    """The model to train, on the CPU. Sharded (FSDP, default `fsdp_sharded()`): only rank 0 reads the weights;
    every other process builds the model on the meta device (parameters without storage; buffers such as the
    rotary tables, which checkpoints do not hold, real) and FSDP fills its shard from rank 0's copy (fsdp_config
    `cpu_ram_efficient_loading`: accelerate broadcasts rank 0's state dict into the sharded model). Host memory
    per pod is then one copy of the model, not one per process; transformers' own switch for it
    (FSDP_CPU_RAM_EFFICIENT_LOADING in from_pretrained) still allocates a zero-filled full copy per process."""
    if sharded is None:
        sharded = fsdp_sharded()
    if not sharded or int(os.environ.get("RANK", "0")) == 0:
        return models.load_causal_lm(ref, dtype, to_device=False)
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(models.resolve(ref))
    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(config, dtype=models.torch_dtype(dtype))


def load_reference_model(ref: str, dtype: str = "auto", *, sharded: bool | None = None):
    """DPO's frozen reference, loaded like the model to train (`load_trained_model`: under FSDP only rank 0 reads
    the weights) and without gradients, so FSDP's mixed precision keeps it in its checkpoint's dtype (accelerate
    upcasts trainable parameters only)."""
    return load_trained_model(ref, dtype, sharded=sharded).requires_grad_(False)


def shard_reference(accelerator, ref_model):
    """DPO's reference sharded the way accelerate shards the policy (fsdp2_prepare_model, in place: layers wrapped
    by the fsdp_config's policy, rank 0's weights broadcast into the shards with `cpu_ram_efficient_loading`).
    TRL's own preparation of a reference (trl.models.prepare_fsdp) has no broadcast, so the other ranks' empty
    models would stay empty, and it wraps only the root (the whole model gathered at once on every GPU); it
    leaves a model that is already sharded as it is."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    return fsdp2_prepare_model(accelerator, ref_model)


def sharded_reference_dpo_trainer(base=None):
    """TRL's DPOTrainer (or `base`, a subclass of it) whose reference model is sharded by `shard_reference` as soon
    as the Trainer has made its accelerator (Trainer.__init__ → create_accelerator_and_postprocess), before
    DPOTrainer's __init__ prepares it."""
    if base is None:
        from trl import DPOTrainer as base

    class ShardedReferenceDPOTrainer(base):
        def __init__(self, *args, ref_model, **kwargs):
            self._reference_to_shard = ref_model
            super().__init__(*args, ref_model=ref_model, **kwargs)

        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            ref = self.__dict__.pop("_reference_to_shard", None)
            if ref is None:
                return
            if self.is_fsdp_enabled:
                shard_reference(self.accelerator, ref)
            elif any(p.is_meta for p in ref.parameters()):
                raise RuntimeError("the DPO reference model was built empty (FSDP loading) but FSDP is off")

    return ShardedReferenceDPOTrainer


def sharding(gpu: bool, world: int, checkpointing: bool) -> dict[str, Any]:
    """TrainingArguments for how the model is spread over the processes: FSDP2 full sharding on several GPUs
    (activation checkpointing inside FSDP, which avoids the extra all-gather of gradient_checkpointing),
    else none (one process, or data parallelism over gloo on the CPU)."""
    if not (gpu and world > 1):
        return {"gradient_checkpointing": checkpointing}
    return {"fsdp": True, "fsdp_config": {
        "version": 2, "reshard_after_forward": True,  # full shard: parameters re-sharded after each forward
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # wraps the model's _no_split_modules (its decoder layers)
        "state_dict_type": "FULL_STATE_DICT",  # rank 0 writes whole checkpoints and a loadable model
        "cpu_ram_efficient_loading": True,  # the other ranks' models are empty (load_trained_model)
        "activation_checkpointing": checkpointing}}


def common_args(section, *, examples: int, checkpoints: str, seed: int, dtype: str) -> dict[str, Any]:
    """TrainingArguments shared by every trainer, from an SFTSpec or TrainingSpec."""
    import torch

    from synpo_operator.api.parallelism import global_batch_problem

    from .errors import ConfigError

    world = world_size()
    problem = global_batch_problem(section.batch_size, world, "batchSize")
    if problem:  # the plan refuses such a spec; a hand-made config still fails loudly
        raise ConfigError(problem)
    micro = micro_batch(per_device(section.batch_size, world), section.micro_batch_size)
    steps = total_steps(examples, section.batch_size, micro, section.epochs, world)
    gpu = torch.cuda.is_available()
    bf16 = models.torch_dtype(dtype) == torch.bfloat16 and gpu
    return dict(
        output_dir=durable.local_dir(checkpoints),  # on object storage: uploaded after each save
        num_train_epochs=section.epochs,
        learning_rate=section.learning_rate,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation(section.batch_size, micro, world),
        warmup_steps=warmup_steps(section.warmup_ratio, steps),
        lr_scheduler_type="cosine",
        max_length=section.max_length,
        bf16=bf16,
        use_cpu=not gpu,
        **sharding(gpu, world, bool(getattr(section, "gradient_checkpointing", False))),
        **save_policy(),
        save_total_limit=2,
        logging_steps=1,
        report_to="none",
        seed=seed,
        data_seed=seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def _finish(trainer, model_dir: str, tokenizer, checkpoints: str) -> dict[str, Any]:
    import torch.distributed as dist

    if dist.is_initialized():
        log.info("training on %d processes (rank %d, torch.distributed backend %s)", dist.get_world_size(),
                 dist.get_rank(), dist.get_backend())
    resume = durable.resume_point(checkpoints)  # on object storage: downloaded from the run's storage
    if resume:
        log.info("resuming from %s", resume)
    out = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(model_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(model_dir)
    return {"loss": round(float(out.training_loss), 5), "steps": int(trainer.state.global_step),
            **({"resumedFrom": os.path.basename(resume)} if resume else {})}


def sft(base_ref: str, examples: list[dict], section, *, model_dir: str, checkpoints: str, seed: int,
        dtype: str = "auto") -> dict[str, Any]:
    """SFT of base on conversational prompt → completion examples; loss on the completion only."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = models.load_tokenizer(base_ref, padding_side="right")
    model = load_trained_model(base_ref, dtype)
    args = SFTConfig(**common_args(section, examples=len(examples), checkpoints=checkpoints, seed=seed, dtype=dtype),
                     completion_only_loss=True, packing=False, dataset_num_proc=None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
                         processing_class=tokenizer, callbacks=callbacks(checkpoints))
    return _finish(trainer, model_dir, tokenizer, checkpoints)


def preference(base_ref: str, pairs: list[dict], section, *, model_dir: str, checkpoints: str, seed: int,
               dtype: str = "auto", held_out: list[dict] | None = None) -> dict[str, Any]:
    """SimPO (TRL's CPOTrainer, loss_type=simpo, cpo_alpha=0, its forward on packed rows) or DPO (explicit
    frozen reference copy). The result adds the trained model's reward accuracy and margin on the training pairs
    (and on `held_out` pairs when given): `reward_figures`."""
    trainer, tokenizer = preference_trainer(base_ref, pairs, section, checkpoints=checkpoints, seed=seed, dtype=dtype)
    stats = _finish(trainer, model_dir, tokenizer, checkpoints)
    trainer.args.train_sampling_strategy = "random"  # training is done; evaluation reads in order, no lengths
    stats.update(reward_figures(trainer, trainer.train_dataset, "reward"))
    if held_out:
        stats.update(reward_figures(trainer, _eval_dataset(trainer, held_out), "heldOutReward"))
    return stats


def _eval_dataset(trainer, pairs: list[dict]):
    """Pairs as the trainer's evaluate takes them: DPOTrainer tokenises a raw dataset itself, CPOTrainer only
    in its __init__ (the same three maps here)."""
    from datasets import Dataset
    from trl.data_utils import maybe_apply_chat_template, maybe_extract_prompt

    dataset = Dataset.from_list(pairs)
    if not hasattr(trainer, "tokenize_row"):
        return dataset
    dataset = dataset.map(maybe_extract_prompt).map(maybe_apply_chat_template,
                                                    fn_kwargs={"processing_class": trainer.processing_class})
    return dataset.map(trainer.tokenize_row)


def reward_figures(trainer, dataset, prefix: str) -> dict[str, float]:
    """<prefix>Accuracy and <prefix>Margin of the trained model on `dataset`, as TRL logs them (its eval pass:
    rewards/accuracies, the share of pairs whose chosen answer gets the higher implicit reward — β × mean log-prob
    for SimPO, β × log-ratio to the reference for DPO — and rewards/margins, the mean chosen − rejected reward;
    per-batch means averaged; SimPO's loss is −log σ(margin − γ), so a margin below γ is still being pushed up)."""
    metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix="eval")
    out = {}
    for key, name in (("eval_rewards/accuracies", "Accuracy"), ("eval_rewards/margins", "Margin")):
        if metrics.get(key) is not None:
            out[prefix + name] = round(float(metrics[key]), 5)
    return out


def preference_trainer(base_ref: str, pairs: list[dict], section, *, checkpoints: str, seed: int,
                       dtype: str = "auto", model=None, group_by_length: bool = True):
    """The train stage's preference trainer (used by `preference` and bench/training.py).

    Length-grouped batching (`group_by_length`, SimPO only): transformers' LengthGroupedSampler shuffles the
    pairs, cuts the order into mega-batches (up to 50 global batches; one global batch while the dataset holds
    fewer than 8) and sorts each by length before it is cut into micro-batches, so a micro-batch pads to
    similar lengths: less compute on pad tokens on CPU and GPU alike. Every pair is still seen once per epoch;
    on large datasets the global batches become length-homogeneous (transformers' standard group_by_length).
    SimPO's forward then runs on packed rows (`packed_cpo_trainer`): no compute on padding at all.
    """
    from datasets import Dataset

    tokenizer = models.load_tokenizer(base_ref, padding_side="right")
    if model is None:
        model = load_trained_model(base_ref, dtype)
    common = common_args(section, examples=len(pairs), checkpoints=checkpoints, seed=seed, dtype=dtype)
    # SimPO only: CPOTrainer keeps extra dataset columns (remove_unused_columns=False), DPOTrainer would drop
    # the `length` column before the sampler reads it.
    group_by_length = group_by_length and section.loss == "simpo"
    if group_by_length:
        common["train_sampling_strategy"] = "group_by_length"
    dataset = Dataset.from_list(pairs)
    if section.loss == "simpo":
        from trl.experimental.cpo import CPOConfig

        args = CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, simpo_gamma=section.gamma, beta=section.beta,
                         max_completion_length=section.max_length)
        trainer = packed_cpo_trainer()(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                       callbacks=callbacks(checkpoints))
    else:
        from trl import DPOConfig

        # The policy object was not loaded from a hub id, so DPOTrainer cannot rebuild the reference itself.
        args = DPOConfig(**common, beta=section.beta)
        trainer = sharded_reference_dpo_trainer()(
            model=model, ref_model=load_reference_model(base_ref, dtype), args=args, train_dataset=dataset,
            processing_class=tokenizer, callbacks=callbacks(checkpoints))
    if group_by_length:
        _add_length_column(trainer)
    return trainer, tokenizer


def packed_cpo_trainer():
    """TRL's CPOTrainer with its forward on packed rows (`packing.packed_logps`): the same SimPO loss, computed
    on the real tokens only, and output logits only where a completion token is scored (with several
    processes: at the columns some packed row scores, through the shared model's forward). TRL's own forward
    serves what packing does not cover (an NLL term, encoder-decoders, attention kernels without 4-D masks,
    left-padded batches)."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler
    from trl.experimental.cpo import CPOTrainer

    from . import packing

    class PackedCPOTrainer(CPOTrainer):
        processed_tokens = 0
        """Tokens the model ran on (rows x width), for the benchmark."""

        def _get_train_sampler(self, train_dataset=None):
            # Length groups in GLOBAL batches (the Trainer uses one process's share): the same order, so the
            # same examples per optimizer step, whatever the number of processes.
            sampler = super()._get_train_sampler(train_dataset)
            if isinstance(sampler, LengthGroupedSampler):
                sampler.batch_size *= self.args.world_size
            return sampler

        def concatenated_forward(self, model, batch):
            # several processes: `model` is the shared one (DDP / FSDP), its forward runs the packed rows
            inner = self.accelerator.unwrap_model(model)
            if (self.is_encoder_decoder or self.aux_loss_enabled or self.cpo_alpha != 0
                    or inner.config._attn_implementation not in ("sdpa", "eager")):
                return super().concatenated_forward(model, batch)  # before concatenating: TRL does it again
            cat = self.concatenated_inputs(batch, padding_value=self.pad_token_id, device=self.accelerator.device)
            if not packing.packable(cat["concatenated_attention_mask"]):
                return super().concatenated_forward(model, batch)
            logps, mean_logit, processed = packing.packed_logps(
                inner, cat["concatenated_input_ids"], cat["concatenated_attention_mask"], cat["concatenated_labels"],
                average=self.loss_type in ("ipo", "simpo"),  # TRL pads labels with -100
                wrapped=model if world_size() > 1 else None)
            self.processed_tokens += processed
            chosen = batch["chosen_labels"].shape[0]
            nll = torch.tensor(0.0, device=logps.device)
            return logps[:chosen], logps[chosen:], mean_logit[:chosen], mean_logit[chosen:], nll

    return PackedCPOTrainer


def pair_lengths(dataset) -> list[int]:
    """Tokens of the longer side of each tokenised pair (what a micro-batch pads to)."""
    cols = dataset.column_names
    if "chosen_input_ids" in cols and "prompt_input_ids" in cols and "chosen_labels" in cols:  # CPO: prompt+answer
        return [max(len(c), len(r)) for c, r in zip(dataset["chosen_input_ids"], dataset["rejected_input_ids"],
                                                     strict=True)]
    if "chosen_ids" in cols:  # TRL 1.x DPO: prompt and completions apart
        return [len(p) + max(len(c), len(r)) for p, c, r in
                zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True)]
    raise ValueError(f"cannot tell pair lengths from columns {cols}")


def _add_length_column(trainer) -> None:
    """The `length` column LengthGroupedSampler sorts by (the trainers tokenise in their __init__)."""
    dataset = trainer.train_dataset
    name = trainer.args.length_column_name
    if name in dataset.column_names:
        return
    try:
        lengths = pair_lengths(dataset)
    except ValueError:
        log.warning("no pair lengths in %s: length grouping off", dataset.column_names)
        trainer.args.train_sampling_strategy = "random"
        return
    trainer.train_dataset = dataset.add_column(name, lengths)
