"""The stage runner: config in, done-check, run, manifest, result summary out.

Every stage module exposes `run(ctx: StageContext) -> dict` (its result summary). This module owns the I/O
around it: skip a done stage (re-emitting its result), discard a partial one, write the manifest last, and
report the result through the termination log and a final `SYNPO_RESULT {...}` stdout line.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from synpo_operator.api import results

from . import store
from .errors import ConfigError, UserError

log = logging.getLogger("synpo_workloads")

STAGE_MODULES = {
    "preflight": "preflight",
    "keywords": "keywords",
    "prompt-generator": "prompt_generator",
    "prompts": "prompts",
    "base-responses": "responses",
    "responses": "responses",
    "improver": "improver",
    "refine": "refine",
    "pairs": "pairs",
    "train": "train",
    "evaluate": "evaluate",
}
"""Graph stage name (plan/graph.py) → module under synpo_workloads/stages. Underscored names work too."""

RESULT_PREFIX = "SYNPO_RESULT "
TERMINATION_LOG = "/dev/termination-log"
MAX_RESULT_BYTES = 4096


def module_for(stage: str) -> str:
    name = stage.replace("_", "-")
    if name not in STAGE_MODULES:
        raise ConfigError(f"unknown stage {stage!r} (one of {', '.join(sorted(STAGE_MODULES))})")
    return STAGE_MODULES[name]


@dataclass
class StageContext:
    """What a stage sees: its config (plan/stage_config.py), the parsed spec, and a writer for its output."""

    config: dict[str, Any]
    shard: int = 0
    writer: store.StageWriter = field(init=False)
    after_finish: list = field(default_factory=list)
    """Callables run after the manifest is written (e.g. dropping training checkpoints)."""

    def __post_init__(self) -> None:
        for key in ("stage", "output", "spec"):
            if key not in self.config:
                raise ConfigError(f"stage config: missing field {key!r}")
        if not 0 <= self.shard < self.shards:
            raise ConfigError(f"--shard {self.shard}: out of range for shards={self.shards}")
        self.writer = store.StageWriter.for_stage(self.output, self.config, self.shard, self.shards)

    @cached_property
    def spec(self):
        from pydantic import ValidationError

        from synpo_operator.api.run import SynPORunSpec

        try:
            return SynPORunSpec.model_validate(self.config["spec"])
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"stage config: spec.{where}: {err['msg']}") from e

    @property
    def raw_spec(self) -> dict[str, Any]:
        return self.config["spec"]

    @property
    def stage(self) -> str:
        return str(self.config["stage"])

    @property
    def iteration(self) -> int:
        return int(self.config.get("iteration", 0))

    @property
    def shards(self) -> int:
        return max(1, int(self.config.get("shards", 1)))

    @property
    def output(self) -> str:
        return str(self.config["output"])

    def input(self, role: str) -> str:
        try:
            return self.config["inputs"][role]
        except KeyError as e:
            raise ConfigError(f"stage config: inputs.{role} is required by stage {self.stage}") from e

    def model(self, role: str) -> str:
        try:
            return self.config["models"][role]
        except KeyError as e:
            raise ConfigError(f"stage config: models.{role} is required by stage {self.stage}") from e

    def data(self, role: str) -> str:
        try:
            return self.config["data"][role]
        except KeyError as e:
            raise ConfigError(f"stage config: data.{role} is required by stage {self.stage}") from e

    def seed(self, salt: str = "") -> int:
        """A deterministic 31-bit seed from the run's randomSeed, this stage, iteration, shard and a salt."""
        key = f"{self.spec.random_seed}/{self.stage}/{self.iteration}/{self.shard}/{salt}"
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") & 0x7FFFFFFF

    def my_rows(self, rows):
        """Rows of this shard: those whose `index` % shards == shard."""
        return [r for r in rows if int(r["index"]) % self.shards == self.shard]


def is_main_process() -> bool:
    """Rank 0 of an accelerate/torchrun launch (or a plain process)."""
    return int(os.environ.get("RANK", "0")) == 0


def _termination_log() -> str | None:
    """Where the termination message goes: $SYNPO_TERMINATION_LOG, else Kubernetes' path when writable."""
    target = os.environ.get("SYNPO_TERMINATION_LOG")
    if not target and os.path.exists(TERMINATION_LOG) and os.access(TERMINATION_LOG, os.W_OK):
        target = TERMINATION_LOG
    return target


def emit(result: dict[str, Any]) -> None:
    """Termination message (≤ 4 KiB) and the last stdout line."""
    text = json.dumps(result, separators=(",", ":"), default=str)
    if len(text.encode()) > MAX_RESULT_BYTES:
        text = json.dumps({k: v for k, v in result.items() if isinstance(v, int | float | bool)},
                          separators=(",", ":"))[:MAX_RESULT_BYTES]
    target = _termination_log()
    if target:
        try:
            with open(target, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            log.warning("cannot write the termination log %s: %s", target, e)
    sys.stdout.flush()
    print(RESULT_PREFIX + text, flush=True)


def run_stage(stage: str, config: dict[str, Any], shard: int = 0) -> dict[str, Any]:
    """Run one stage (shard) to completion, or re-emit the result of a done one. Raises on failure."""
    module = importlib.import_module(f"synpo_workloads.stages.{module_for(stage)}")
    ctx = StageContext(config, shard)
    part = ctx.writer.directory
    try:
        manifest = store.load_manifest(part)
        if manifest is not None and store.verify(part, manifest):
            log.info("%s: already done (%s); not redone", stage, part)
            result = dict(manifest.get("result") or {})
            emit(result)
            return result
        if is_main_process():
            store.discard_partial(part)  # a half-written attempt; checkpoints/ survive for resume
    except PermissionError as e:  # the store refuses us: the pre-flight's check names spec.storage.uri, and
        log.warning("%s: the run's storage refuses access (%s)", stage, e)  # any other stage fails writing
    _ = ctx.spec  # validate the spec before any work
    started = time.time()
    result = dict(module.run(ctx) or {})
    result.setdefault(results.SECONDS, round(time.time() - started, 2))
    if is_main_process():
        ctx.writer.finish(result)
        for hook in ctx.after_finish:
            hook()
        emit(result)
    return result


def write_failure(message: str, code: int) -> None:
    target = _termination_log()
    if target:
        try:
            with open(target, "w", encoding="utf-8") as f:
                f.write(json.dumps({results.ERROR: message[:3000], results.EXIT_CODE: code}))
        except OSError:
            pass


def main_entry(stage: str, config_path: str, shard: int) -> int:
    """Exit codes: 0 ok; 2 bad data/config (one line on stderr); 1 anything unexpected (traceback)."""
    try:
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except FileNotFoundError as e:
            raise ConfigError(f"{config_path}: stage config not found") from e
        except json.JSONDecodeError as e:
            raise ConfigError(f"{config_path}:{e.lineno}:{e.colno}: malformed stage config JSON: {e.msg}") from e
        if not isinstance(config, dict):
            raise ConfigError(f"{config_path}: stage config must be a JSON object")
        run_stage(stage, config, shard)
        return 0
    except UserError as e:
        message = str(e).replace("\n", " ")
        print(f"synpo {stage}: error: {message}", file=sys.stderr, flush=True)
        write_failure(message, e.exit_code)
        return e.exit_code
    except Exception as e:  # unexpected: keep the traceback for debugging
        log.exception("%s failed", stage)
        write_failure(f"{type(e).__name__}: {e}", 1)
        return 1
