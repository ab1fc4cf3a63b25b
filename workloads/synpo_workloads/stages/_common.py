"""Helpers shared by stage modules (I/O glue; the logic lives in text, templates, winrate)."""

from __future__ import annotations

import os
import random

from .. import checkpoints, store
from ..engines import Metered, SamplingParams, make_engine
from ..errors import DataError


def sampling(ctx, *, salt: str = "", **overrides) -> SamplingParams:
    g = ctx.spec.generation
    params = dict(temperature=g.temperature, top_p=g.top_p, max_new_tokens=g.max_new_tokens, seed=ctx.seed(salt))
    params.update(overrides)
    return SamplingParams(**params)


def engine(ctx, model_ref: str, *, gpus: int | None = None) -> Metered:
    """The spec's engine on this pod's GPUs (`gpus` of the stage config, split into engines of
    `tensorParallelSize` GPUs), metered for the stage result."""
    g = ctx.spec.generation
    gpus = int(ctx.config.get("gpus", 0)) if gpus is None else gpus
    tp = int(ctx.config.get("tensorParallelSize") or max(gpus, 1))
    return Metered(make_engine(g.engine, model_ref, dtype=ctx.spec.model.dtype, batch_size=g.batch_size,
                               gpus=gpus, gpu_memory_utilization=g.gpu_memory_utilization,
                               tensor_parallel_size=tp))


def checkpoints_dir(ctx) -> str:
    """`<output>/checkpoints` on the run's storage, object storage included (checkpoints.py): a restarted stage
    resumes on any node."""
    return store.join(ctx.writer.directory, store.CHECKPOINTS)


def drop_checkpoints(path: str) -> None:
    """Resume state is useless once the model is saved; it would double the stage's disk use."""
    if os.environ.get("SYNPO_KEEP_CHECKPOINTS") != "1":
        checkpoints.drop(path)


def rows_or_fail(stage_output: str, name: str, role: str) -> list[dict]:
    try:
        rows = list(store.read_rows(stage_output, name))
    except FileNotFoundError as e:
        raise DataError(f"inputs.{role}: {stage_output} is not a finished stage output ({e})") from e
    return rows


def select_seed(rows: list[dict], limit: int | None, rng: random.Random) -> list[tuple[int, dict]]:
    """Up to `limit` seed rows (a seeded sample, in file order) with their indices."""
    indexed = list(enumerate(rows))
    if limit is None or limit >= len(indexed):
        return indexed
    return sorted(rng.sample(indexed, limit), key=lambda p: p[0])
