"""Data parallelism inside a pod: several engines side by side, each in its own process on its own slice of the
pod's GPUs (CUDA_VISIBLE_DEVICES), the prompts split between them in order and the outputs put back in order.

Why processes: an engine's GPUs are fixed when CUDA starts in a process, and vLLM's own tensor-parallel workers
and process groups belong to one engine per process. Request i of a call keeps seed `seed + i` whichever engine
serves it (each shard's seed is offset by its first index), so a vLLM call's outputs do not depend on how many
engines split it. The sharding and gathering are pure functions below; `EngineProcesses` is the I/O around them.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import traceback
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

from .. import errors
from ..errors import ConfigError, UserError
from ..training import TORCHRUN_ENV  # an engine process is a plain process, not a torchrun rank
from . import Prompt, SamplingParams


def shard_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous [start, end) ranges covering 0..n in order, sizes differing by at most one."""
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts}")
    base, extra = divmod(n, parts)
    bounds, start = [], 0
    for k in range(parts):
        end = start + base + (1 if k < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def gather(shards: Sequence[Sequence[Any]]) -> list[Any]:
    """The shards' items back in one list, in shard order (the inverse of cutting by shard_bounds)."""
    return [item for shard in shards for item in shard]


def device_groups(devices: Sequence[str], size: int) -> list[list[str]]:
    """The pod's GPUs cut into consecutive groups of `size`, one per engine (size must divide their number)."""
    if size < 1 or len(devices) % size:
        raise ConfigError(f"spec.generation.tensorParallelSize: {size} does not divide the {len(devices)} GPUs "
                          "of this pod")
    return [list(devices[i:i + size]) for i in range(0, len(devices), size)]


def visible_devices(gpus: int) -> list[str]:
    """The pod's GPUs as CUDA names them in this process: CUDA_VISIBLE_DEVICES if set, else 0..gpus-1."""
    listed = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:gpus] if len(listed) >= gpus else [str(i) for i in range(gpus)]


@contextmanager
def _child_env(devices: list[str] | None):
    """The environment a spawned engine process inherits: its GPUs only, no torchrun variables."""
    saved = dict(os.environ)
    for key in TORCHRUN_ENV:
        os.environ.pop(key, None)
    if devices:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _failure(err: BaseException) -> tuple:
    """A worker's error as the parent re-raises it: bad input keeps its class (exit 2), the rest a trace."""
    user = type(err).__name__ if isinstance(err, UserError) else None
    return ("error", user, str(err) if user else f"{type(err).__name__}: {err}\n{traceback.format_exc()}")


def _serve(conn, make: dict) -> None:
    """An engine process: build the engine, then answer (prompts, params) requests until None."""
    from . import make_engine

    try:
        engine = make_engine(**make)
        conn.send(("ready", os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES"),
                   sorted(k for k in TORCHRUN_ENV if k in os.environ)))
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(_failure(err))
        return
    while True:
        request = conn.recv()
        if request is None:
            engine.close()
            return
        prompts, params = request
        try:
            outputs = engine.generate(prompts, params)
            conn.send(("ok", outputs, getattr(engine, "last_stats", {}), getattr(engine, "last_prompt_ids", [])))
        except BaseException as err:  # noqa: BLE001
            conn.send(_failure(err))


class EngineProcesses:
    """One engine per device group, each in a spawned process; `generate` splits the prompts between them."""

    def __init__(self, groups: list[list[str]], **make: Any):
        ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA or threads
        self.workers: list[tuple[Any, Any]] = []
        self.groups = groups
        self.pids: list[int] = []
        self.last_stats: dict = {}
        self.last_prompt_ids: list[list[int]] = []
        try:
            for group in groups:
                parent, child = ctx.Pipe()
                # not a daemon: vLLM's engine core and tensor-parallel workers are processes of its own
                proc = ctx.Process(target=_serve, args=(child, {**make, "gpus": len(group)}), daemon=False)
                with _child_env(group):
                    proc.start()
                child.close()
                self.workers.append((proc, parent))
            ready = [self._answer(k) for k in range(len(self.workers))]
            self.pids = [r[1] for r in ready]
            # what each engine process saw: its GPUs, and no torchrun variables
            self.child_env = [{"CUDA_VISIBLE_DEVICES": r[2], "torchrun": r[3]} for r in ready]
        except BaseException:
            self.close()
            raise

    def _answer(self, k: int) -> tuple:
        proc, conn = self.workers[k]
        try:
            reply = conn.recv()
        except EOFError:
            proc.join(5)
            raise RuntimeError(f"generation engine {k} (pid {proc.pid}) died with exit code {proc.exitcode}") from None
        if reply[0] == "error":
            _, user, message = reply
            if user:
                raise getattr(errors, user, UserError)(message)
            raise RuntimeError(f"generation engine {k}: {message}")
        return reply

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[str]:
        busy = [(k, start, end) for k, (start, end) in enumerate(shard_bounds(len(prompts), len(self.workers)))
                if end > start]  # an engine with no prompts is not asked (engines refuse an empty batch)
        for k, start, end in busy:
            self.workers[k][1].send((prompts[start:end], dataclasses.replace(params, seed=params.seed + start)))
        replies = [self._answer(k) for k, _, _ in busy]
        self.last_stats = {"prompts": len(prompts),
                           "new_tokens": sum(int(r[2].get("new_tokens", 0)) for r in replies),
                           "engines": len(self.workers)}
        self.last_prompt_ids = gather([r[3] for r in replies])
        return gather([r[1] for r in replies])

    def close(self) -> None:
        for _, conn in self.workers:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc, conn in self.workers:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            conn.close()
        self.workers = []
