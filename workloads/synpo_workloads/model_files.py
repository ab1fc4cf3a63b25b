"""A checkpoint's files, read without loading its weights: the pre-flight's view of a model reference.

`open_checkpoint(ref)` finds the checkpoint a stage would load (the same references as models.resolve: a local
directory, an fsspec URI, `package:NAME`, a hub id) and lists its files; small files (config.json, the
tokenizer's) are read whole, weights only as far as their safetensors header or index. A hub id is read from
the local Hugging Face cache when it is there, otherwise through the hub's own file system (`hf://`), which
answers from the hub's metadata when the hub is reachable and fails with its own words when it is not.
"""

from __future__ import annotations

import json
import os
import posixpath
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import models, store
from .errors import ModelError

MAX_HEADER_BYTES = 100 << 20
"""A safetensors header larger than this is not a header (the format caps it at 100 MB)."""

WEIGHTS = (".safetensors", ".bin", ".pt", ".gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")
"""Any one of them: a tokenizer the stage can load (fast, sentencepiece, BPE or WordPiece vocabularies)."""
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


@dataclass
class Checkpoint:
    ref: str
    where: str
    """Where it was found (a directory, URI or package), for messages."""
    files: frozenset[str]
    """Relative paths of its files."""
    _read: Callable[[str], bytes]
    _read_head: Callable[[str, int, int], bytes]
    gguf: bool = False
    """A GGUF checkpoint (a `package:` model before conversion): tokenizer and template live inside it."""

    def read_json(self, name: str) -> dict[str, Any]:
        try:
            doc = json.loads(self._read(name))
        except ValueError as e:
            raise ModelError(f"{self.where}/{name}: not valid JSON ({e})") from e
        if not isinstance(doc, dict):
            raise ModelError(f"{self.where}/{name}: not a JSON object")
        return doc

    def weight_files(self) -> list[str]:
        return sorted(f for f in self.files if f.endswith(WEIGHTS) and "/" not in f)

    def tensor_names(self) -> tuple[set[str], str] | None:
        """Names of the checkpoint's tensors and where they were read (index or safetensors headers); None
        when only pickled weights (.bin) are there, whose names cannot be read without loading them."""
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if index in self.files:
                return set(self.read_json(index).get("weight_map") or {}), index
        shards = [f for f in self.weight_files() if f.endswith(".safetensors")]
        if not shards:
            return None
        names: set[str] = set()
        for shard in shards:
            names |= {k for k in self.safetensors_header(shard) if k != "__metadata__"}
        return names, " and ".join(f"the {s} header" for s in shards)

    def safetensors_header(self, name: str) -> dict[str, Any]:
        head = self._read_head(name, 0, 8)
        if len(head) < 8:
            raise ModelError(f"{self.where}/{name}: too short for a safetensors file")
        (size,) = struct.unpack("<Q", head)
        if size > MAX_HEADER_BYTES:
            raise ModelError(f"{self.where}/{name}: not a safetensors file (header of {size} bytes)")
        try:
            return json.loads(self._read_head(name, 8, size))
        except ValueError as e:
            raise ModelError(f"{self.where}/{name}: unreadable safetensors header ({e})") from e


def _local(ref: str, path: Path, where: str | None = None) -> Checkpoint:
    files = frozenset(str(p.relative_to(path)).replace(os.sep, "/") for p in path.rglob("*") if p.is_file())

    def read(name: str) -> bytes:
        return (path / name).read_bytes()

    def read_head(name: str, offset: int, size: int) -> bytes:
        with open(path / name, "rb") as f:
            f.seek(offset)
            return f.read(size)

    return Checkpoint(ref, where or str(path), files, read, read_head)


def _fsspec(ref: str, uri: str) -> Checkpoint:
    fs, inner = store._fs(uri)
    fs.invalidate_cache()
    inner = inner.rstrip("/")
    if not fs.exists(inner):
        raise ModelError(f"{uri}: not found")
    files = frozenset(posixpath.relpath(p, inner) for p in fs.find(inner))

    def read(name: str) -> bytes:
        return fs.cat_file(f"{inner}/{name}")

    def read_head(name: str, offset: int, size: int) -> bytes:
        return fs.cat_file(f"{inner}/{name}", start=offset, end=offset + size)

    return Checkpoint(ref, uri, files, read, read_head)


def _package(ref: str) -> Checkpoint:
    dist = ref.split(":", 1)[1]
    converted = models.cache_root() / models._safe_name(ref)
    if (converted / "config.json").exists():
        return _local(ref, converted)
    files = models._package_files(dist)  # ModelError when the package is not installed
    configs = [f for f in files if f.name == "config.json"]
    if configs:
        return _local(ref, configs[0].parent, f"package {dist}")
    ggufs = sorted(f for f in files if f.suffix == ".gguf" and f.is_file())
    if not ggufs:
        raise ModelError(f"package {dist!r} ships no .gguf file or config.json")
    return Checkpoint(ref, f"package {dist}", frozenset({ggufs[0].name}), lambda n: b"", lambda n, o, s: b"",
                      gguf=True)


def _hub(ref: str) -> Checkpoint:
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(ref, "config.json")
    if isinstance(cached, str):
        return _local(ref, Path(cached).parent, f"{ref} (Hugging Face cache)")
    if constants.HF_HUB_OFFLINE:
        raise ModelError(f"{ref}: not a directory, package or URI, and not in the Hugging Face cache, with the "
                         "hub offline (HF_HUB_OFFLINE=1)")
    return _fsspec(ref, f"hf://{ref}")


def open_checkpoint(ref: str) -> Checkpoint:
    """The checkpoint behind a model reference, listed (nothing loaded). Raises ModelError or the store's own
    error (credentials, network) when it cannot be reached."""
    if ref.startswith("package:"):
        return _package(ref)
    if store.is_uri(ref):
        return _fsspec(ref, ref)
    local = store._local(ref)
    if os.path.isdir(local):
        return _local(ref, Path(local))
    if os.path.isabs(local) or local.startswith(".") or os.path.exists(local):
        raise ModelError(f"{ref}: no such directory")
    return _hub(ref)
