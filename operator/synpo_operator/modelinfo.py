"""Read a model's attention-head count and size where the planning process can see it (I/O; checks live in
plan: resources.py, sizing.py, fit.py).

Readable: a local checkpoint directory (config.json), a `package:` model already converted into the model
cache, or its GGUF file (header only). Anything else (a hub id, an object-store URI, a path only a pod
mounts) gives None: the stage checks at start instead.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path


def model_problems(spec) -> list[str]:
    """Plan-time checks that need the model's config (tensor parallelism; plan/engines.py)."""
    from .plan.engines import tensor_parallel_problems

    if spec.generation.engine != "vllm":
        return []
    return tensor_parallel_problems(spec, attention_heads(spec.model.base))


def capacity_problems(spec) -> list[str]:
    """Plan-time capacity checks (plan/fit.py) with each model's measured size where readable."""
    from .plan.fit import capacity_problems as problems

    return problems(spec, functools.lru_cache(maxsize=None)(model_size))  # each model read once per check


def model_size(ref: str):
    """A model's bytes (plan.sizing.ModelSize): measured from a checkpoint the planning process can read (a
    local directory, an installed package), else estimated from the name (None: unknown). Only the standard
    library reads it: the operator has no torch, transformers or workloads."""
    from .plan.sizing import name_estimate

    try:
        measured = _measure(ref)
    except (OSError, ValueError):  # unreadable here: fall back to the name
        measured = None
    return measured or name_estimate(ref)


def _measure(ref: str):
    from .plan.sizing import ModelSize

    if ref.startswith("package:"):
        from importlib import metadata

        try:
            files = [Path(str(f.locate())) for f in metadata.distribution(ref.split(":", 1)[1]).files or []]
        except metadata.PackageNotFoundError:
            return None
        configs = [f for f in files if f.name == "config.json" and f.is_file()]
        if configs:
            return _measure_dir(configs[0].parent)
        ggufs = sorted(f for f in files if f.suffix == ".gguf" and f.is_file())
        if ggufs:  # dequantised to float32 into the cache at load time: up to 8x a 4-bit file
            return ModelSize(8 * ggufs[0].stat().st_size, False,
                             f"8 x its GGUF file {ggufs[0].name} (dequantised to float32 at load)")
        return None
    if "://" in ref and not ref.startswith("file://"):
        return None
    path = Path(ref[len("file://"):] if ref.startswith("file://") else ref)
    return _measure_dir(path) if path.is_dir() else None


_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1}


def _measure_dir(path: Path):
    """The checkpoint's own metadata: its shard index's total_size, else its weight files, else config.json's
    dimensions × its dtype."""
    from .plan.sizing import ModelSize, config_parameters

    for name in _INDEXES:
        if (path / name).is_file():
            total = json.loads((path / name).read_text(encoding="utf-8")).get("metadata", {}).get("total_size")
            if total:
                return ModelSize(int(total), True, f"{name} total_size")
    for pattern in ("*.safetensors", "*.bin"):
        weights = [f for f in path.glob(pattern) if f.is_file()]
        if weights:
            return ModelSize(sum(f.stat().st_size for f in weights), True,
                             f"{len(weights)} {pattern[2:]} file(s)")
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        params = config_parameters(config)
        if params:
            dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
            size = _DTYPE_BYTES.get(dtype, 2)
            return ModelSize(params * size, True, f"config.json: {params / 1e9:.2f}B parameters x {size} bytes")
    return None


def attention_heads(ref: str) -> int | None:
    try:
        if ref.startswith("package:"):
            return _package_heads(ref)
        path = Path(ref[len("file://"):] if ref.startswith("file://") else ref)
        if "://" not in ref and (path / "config.json").is_file():
            return _config_heads(path / "config.json")
    except Exception:  # noqa: BLE001 - unreadable here: the stage checks at start
        return None
    return None


def _config_heads(path: Path) -> int | None:
    config = json.loads(path.read_text(encoding="utf-8"))
    config = config.get("text_config", config)  # multimodal configs nest the language model's
    heads = config.get("num_attention_heads")
    return int(heads) if heads else None


def _package_heads(ref: str) -> int | None:
    try:
        from synpo_workloads import models
    except ImportError:  # the operator image has no workloads
        return None
    cached = models.cache_root() / models._safe_name(ref) / "config.json"
    if cached.is_file():
        return _config_heads(cached)
    ggufs = sorted(f for f in models._package_files(ref.split(":", 1)[1]) if f.suffix == ".gguf")
    if not ggufs or not os.path.isfile(ggufs[0]):
        return None
    from gguf import GGUFReader

    reader = GGUFReader(str(ggufs[0]))
    for name, field in reader.fields.items():
        if name.endswith(".attention.head_count"):
            return int(field.parts[field.data[0]][0])
    return None
