"""Read a model's attention-head count where the planning process can see it (I/O; checks live in plan).

Readable: a local checkpoint directory (config.json), a `package:` model already converted into the model
cache, or its GGUF file (header only). Anything else (a hub id, an object-store URI, a path only a pod
mounts) gives None: the stage checks at start instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def model_problems(spec) -> list[str]:
    """Plan-time checks that need the model's config (tensor parallelism; plan/engines.py)."""
    from .plan.engines import tensor_parallel_problems

    if spec.generation.engine != "vllm":
        return []
    return tensor_parallel_problems(spec, attention_heads(spec.model.base))


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
