"""Artifact store: stage outputs on a local path or any fsspec URI, with manifests that say "done".

Layout (DESIGN.md "Artifacts"): a stage writes its files into its output directory and then, last,
`manifest.json` (row counts, sha256 and size of every file, the stage config, package versions, timings and
the result summary). Sharded stages (shards > 1) write `<output>/shard-<i:05d>-of-<n:05d>/`, each with its own
manifest. A directory counts as done only when its manifest is present, parses, and every file it lists still
has the recorded size and checksum. Anything else is partial: discarded and redone. `checkpoints/` (training
resume state) is never part of a manifest and survives a discard, so an interrupted training resumes.

Atomicity without rename (object storage): every file is one PUT of finished bytes (an object store makes an
object visible only once complete), data files first, the manifest last as the commit marker. On fsspec
stores the manifest lists exactly the files this writer wrote (checksummed from the bytes it sent, then
checked against one listing of the directory: size and ETag), so leftovers of a killed attempt are never
listed and never read; `verify` compares size and ETag from one listing instead of downloading every file.
Local files are written under a temporary name and renamed.

No torch import here: the operator side (executors, report) reads artifacts through this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from synpo_operator.api.results import merge_results

MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints"
MANIFEST_KIND = "StageManifest"
_SHARD_RE = re.compile(r"^shard-(\d{5})-of-(\d{5})$")
_VERSION_PACKAGES = ("synpo", "torch", "transformers", "trl", "accelerate", "datasets", "peft", "vllm",
                     "sentence-transformers", "scikit-learn", "fsspec")


# --------------------------------------------------------------------------------------------- file systems
def is_uri(path: str) -> bool:
    """True for fsspec URIs such as s3://b/k or memory://x; file:// counts as local."""
    return "://" in path and not path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def _fs(path: str):
    """(filesystem, path inside it). Local paths get fsspec's local fs only where fsspec code needs one."""
    import fsspec

    fs, inner = fsspec.core.url_to_fs(path)
    return fs, inner


def join(base: str, *parts: str) -> str:
    if is_uri(base):
        return posixpath.join(base, *parts)
    return os.path.join(_local(base), *parts)


def exists(path: str) -> bool:
    if is_uri(path):
        fs, inner = _fs(path)
        return fs.exists(inner)
    return os.path.exists(_local(path))


def read_bytes(path: str) -> bytes:
    if is_uri(path):
        fs, inner = _fs(path)
        return fs.cat_file(inner)
    with open(_local(path), "rb") as f:
        return f.read()


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write a whole file so readers see either nothing or all of it."""
    if is_uri(path):
        # One PUT: object stores have no rename (a copy + delete would leave a temp object behind a kill),
        # and never show a half-written object.
        fs, inner = _fs(path)
        fs.pipe_file(inner, data)
        return
    path = _local(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def upload_file(src: str, dest: str) -> dict[str, Any]:
    """Put a local file at an fsspec URI (one object); returns the {sha256, bytes} a manifest records."""
    digest, size = file_digest(src)
    fs, inner = _fs(dest)
    fs.put_file(src, inner)
    return {"sha256": digest, "bytes": size}


def download_file(src: str, dest: str) -> None:
    fs, inner = _fs(src)
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    fs.get_file(inner, dest)


def _list_files(root: str) -> list[str]:
    """Relative paths of all files under a local root, except the manifest, temp files and checkpoints/."""
    out: list[str] = []
    root = _local(root)
    if not os.path.isdir(root):
        return []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != CHECKPOINTS]
        for name in filenames:
            out.append(os.path.normpath(os.path.join(rel_dir, name)).replace(os.sep, "/"))
    return sorted(r for r in out if r != MANIFEST and not r.startswith(CHECKPOINTS + "/")
                  and not os.path.basename(r).endswith(".tmp"))


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_digest(path: str) -> tuple[str, int]:
    """(sha256 hex, size). Local results are cached by (path, size, mtime), so polling stays cheap."""
    if is_uri(path):
        fs, inner = _fs(path)
        h = hashlib.sha256()
        size = 0
        with fs.open(inner, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        return h.hexdigest(), size
    path = _local(path)
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key], st.st_size


def _listing(directory: str) -> dict[str, dict[str, Any]]:
    """{relative path: info} of every object under an fsspec directory, from one fresh listing."""
    fs, inner = _fs(directory)
    fs.invalidate_cache()  # another process may have written or removed objects since the last listing
    if not fs.exists(inner):
        return {}
    return {posixpath.relpath(full, inner): info for full, info in fs.find(inner, detail=True).items()}


def _etag(info: dict[str, Any]) -> str | None:
    tag = info.get("ETag") or info.get("etag")
    return str(tag).strip('"') if tag else None


def _remove(path: str) -> None:
    if is_uri(path):
        fs, inner = _fs(path)
        if fs.exists(inner):
            fs.rm(inner, recursive=True)
        return
    path = _local(path)
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)


def _listdir(path: str) -> list[str]:
    if is_uri(path):
        fs, inner = _fs(path)
        fs.invalidate_cache()
        if not fs.exists(inner):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(inner, detail=False))
    path = _local(path)
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


# --------------------------------------------------------------------------------------------- layout
def shard_name(shard: int, shards: int) -> str:
    return f"shard-{shard:05d}-of-{shards:05d}"


def shard_dir(output: str, shard: int = 0, shards: int = 1) -> str:
    """Where shard `shard` of `shards` writes: the output itself for unsharded stages."""
    return output if shards <= 1 else join(output, shard_name(shard, shards))


def _part_dirs(output: str, shards: int) -> list[str]:
    return [shard_dir(output, i, shards) for i in range(shards)] if shards > 1 else [output]


# --------------------------------------------------------------------------------------------- manifests
def _body_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest without its own checksum: an edited result or row count is caught too."""
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def load_manifest(directory: str) -> dict[str, Any] | None:
    """The manifest of a stage (or shard) directory, or None when missing, unreadable or altered."""
    path = join(directory, MANIFEST)
    # On object storage only "not there" means not done: any other error (credentials, endpoint, network)
    # propagates, so a store that cannot be read never makes a finished stage look partial (and discarded).
    unreadable = (FileNotFoundError, ValueError) if is_uri(directory) else (OSError, ValueError)
    try:
        if not exists(path):
            return None
        doc = json.loads(read_bytes(path))
    except unreadable:
        return None
    if not isinstance(doc, dict) or doc.get("kind") != MANIFEST_KIND or doc.get("sha256") != _body_digest(doc):
        return None
    return doc


def verify(directory: str, manifest: dict[str, Any] | None = None) -> bool:
    """True when the directory's manifest exists and every listed file has its recorded size and sha256."""
    manifest = manifest if manifest is not None else load_manifest(directory)
    if manifest is None:
        return False
    if is_uri(directory):
        return _verify_objects(directory, manifest.get("files", {}))  # store errors propagate (see above)
    try:
        for rel, info in manifest.get("files", {}).items():
            digest, size = file_digest(join(directory, rel))
            if size != info["bytes"] or digest != info["sha256"]:
                return False
    except (OSError, KeyError, TypeError, FileNotFoundError):
        return False
    return True


def _verify_objects(directory: str, files: dict[str, Any]) -> bool:
    """Object storage: sizes and ETags from one listing (the store's own checksum of each object's bytes);
    files recorded without an ETag (stores that give none) are downloaded and hashed."""
    listing = _listing(directory)
    for rel, info in files.items():
        found = listing.get(rel)
        if found is None or int(found.get("size", -1)) != info["bytes"]:
            return False
        if info.get("etag"):
            if _etag(found) != info["etag"]:
                return False
        elif file_digest(join(directory, rel))[0] != info["sha256"]:
            return False
    return True


def stage_done(output: str, shards: int = 1) -> bool:
    """All shard manifests of the stage present and valid (files match their checksums)."""
    return all(verify(d) for d in _part_dirs(output, shards))


def stage_result(output: str, shards: int = 1) -> dict[str, Any]:
    """The stage's result summary. Sharded stages are merged: integer counts and `seconds` summed, other
    numbers averaged, anything else taken from the first shard. Raises FileNotFoundError when not done."""
    results = []
    for d in _part_dirs(output, shards):
        manifest = load_manifest(d)
        if manifest is None:
            raise FileNotFoundError(f"{join(d, MANIFEST)}: no valid manifest (stage not done)")
        results.append(dict(manifest.get("result") or {}))
    return merge_results(results) or {}


def discard_partial(output: str, shards: int = 1) -> None:
    """Remove whatever an unfinished attempt left (every part without a valid manifest), keeping
    `checkpoints/` so training resumes. Finished parts are left alone."""
    for d in _part_dirs(output, shards):
        if verify(d):
            continue
        for name in _listdir(d):
            if name != CHECKPOINTS:
                _remove(join(d, name))


# --------------------------------------------------------------------------------------------- reading rows
def _complete_shard_dirs(stage_output: str) -> list[str]:
    """The shard directories of a sharded stage's output, in shard order, from the newest complete set."""
    by_count: dict[int, dict[int, str]] = {}
    for name in _listdir(stage_output):
        m = _SHARD_RE.match(name)
        if m:
            by_count.setdefault(int(m.group(2)), {})[int(m.group(1))] = join(stage_output, name)
    for n in sorted(by_count, reverse=True):
        parts = by_count[n]
        if len(parts) == n and all(load_manifest(parts[i]) is not None for i in range(n)):
            return [parts[i] for i in range(n)]
    raise FileNotFoundError(f"{stage_output}: no complete set of shard manifests")


def part_dirs(stage_output: str) -> list[str]:
    """The done directories holding a stage's files: the output itself, or its shards in order."""
    if load_manifest(stage_output) is not None:
        return [stage_output]
    return _complete_shard_dirs(stage_output)


def iter_jsonl(path: str) -> Iterator[dict]:
    """Rows of one JSONL file written by a stage (trusted: stage outputs, not user data)."""
    if is_uri(path):
        fs, inner = _fs(path)
        f = fs.open(inner, "rt", encoding="utf-8")
    else:
        f = open(_local(path), encoding="utf-8")
    with f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_rows(stage_output: str, name: str) -> Iterator[dict]:
    """Rows of `name`.jsonl across all shards of a done stage, in shard order."""
    filename = name if name.endswith(".jsonl") else f"{name}.jsonl"
    for d in part_dirs(stage_output):
        manifest = load_manifest(d) or {}
        if filename in manifest.get("files", {}):  # only what the manifest lists is trusted
            yield from iter_jsonl(join(d, filename))


# --------------------------------------------------------------------------------------------- writing
def package_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for name in _VERSION_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


@dataclass
class StageWriter:
    """Writes one stage (or shard) directory: data files first, the manifest last.

    For fsspec outputs, `local_dir(name)` hands out a local scratch directory (e.g. for a saved model) that
    `finish` uploads before writing the manifest.
    """

    directory: str
    config: dict[str, Any] = field(default_factory=dict)
    shard: int = 0
    shards: int = 1
    started: float = field(default_factory=time.time)
    rows: dict[str, int] = field(default_factory=dict)
    _uploads: dict[str, str] = field(default_factory=dict)
    _scratch: list[str] = field(default_factory=list)
    _sent: dict[str, dict[str, Any]] = field(default_factory=dict)
    """fsspec outputs: {relative path: {sha256, bytes}} of every object this writer put."""

    @classmethod
    def for_stage(cls, output: str, config: dict[str, Any] | None = None, shard: int = 0,
                  shards: int = 1) -> StageWriter:
        return cls(shard_dir(output, shard, shards), dict(config or {}), shard, shards)

    def path(self, name: str) -> str:
        return join(self.directory, name)

    def write_rows(self, name: str, rows: Iterable[dict]) -> int:
        """Write `name`.jsonl atomically; returns the row count."""
        filename = name if name.endswith(".jsonl") else f"{name}.jsonl"
        lines = [json.dumps(r, ensure_ascii=False) for r in rows]
        self._put(filename, ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))
        self.rows[filename.removesuffix(".jsonl")] = len(lines)
        return len(lines)

    def write_json(self, name: str, doc: Any) -> None:
        self._put(name, json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8"))

    def _put(self, rel: str, data: bytes) -> None:
        write_bytes_atomic(self.path(rel), data)
        if is_uri(self.directory):
            self._sent[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            self._after_put()

    def _after_put(self) -> None:
        """Test hook (SYNPO_TEST_PAUSE_AFTER_PUT="<stage>:<seconds>"): pause after each data object of that
        stage, so a test can kill the stage between its first object and its manifest."""
        stage, _, seconds = os.environ.get("SYNPO_TEST_PAUSE_AFTER_PUT", "").partition(":")
        if stage and stage == self.config.get("stage"):
            time.sleep(float(seconds or 0))

    def _upload(self, name: str, local: str) -> None:
        """Put every file of a local scratch directory, one object each, hashing the local bytes."""
        for dirpath, _dirs, filenames in os.walk(local):
            for filename in sorted(filenames):
                src = os.path.join(dirpath, filename)
                rel = posixpath.join(name, os.path.relpath(src, local).replace(os.sep, "/"))
                self._sent[rel] = upload_file(src, self.path(rel))
                self._after_put()

    def record_objects(self, sent: dict[str, dict[str, Any]]) -> None:
        """Objects other processes put into this directory ({relative path: {sha256, bytes}}, as `upload_file`
        returns), listed in the manifest like this writer's own (fsspec outputs)."""
        self._sent.update(sent)

    def _object_files(self) -> dict[str, dict[str, Any]]:
        """The objects this writer put, checked against one listing (size) and stamped with their ETags."""
        listing = _listing(self.directory)
        files = {}
        for rel, info in sorted(self._sent.items()):
            found = listing.get(rel)
            if found is None or int(found.get("size", -1)) != info["bytes"]:
                raise OSError(f"{self.path(rel)}: uploaded object missing or of the wrong size "
                              f"({None if found is None else found.get('size')} != {info['bytes']} bytes)")
            etag = _etag(found)
            files[rel] = {**info, **({"etag": etag} if etag else {})}
        return files

    def local_dir(self, name: str) -> str:
        """A local directory whose contents end up at `<directory>/<name>` when the stage finishes."""
        if not is_uri(self.directory):
            path = join(self.directory, name)
            os.makedirs(path, exist_ok=True)
            return path
        scratch = tempfile.mkdtemp(prefix="synpo-upload-")
        self._scratch.append(scratch)
        self._uploads[name] = scratch
        return scratch

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        """Upload scratch dirs, checksum every file, then write the manifest (last, atomically)."""
        for name, local in self._uploads.items():
            self._upload(name, local)
        for scratch in self._scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        if is_uri(self.directory):
            files = self._object_files()
        else:
            files = {}
            for rel in _list_files(self.directory):
                digest, size = file_digest(join(self.directory, rel))
                files[rel] = {"sha256": digest, "bytes": size}
        finished = time.time()
        manifest = {
            "apiVersion": "synpo.dev/v1alpha1",
            "kind": MANIFEST_KIND,
            "stage": self.config.get("stage"),
            "iteration": self.config.get("iteration"),
            "shard": self.shard,
            "shards": self.shards,
            "rows": dict(self.rows),
            "files": files,
            "config": self.config,
            "versions": package_versions(),
            "timings": {"started": self.started, "finished": finished, "seconds": round(finished - self.started, 3)},
            "result": result,
        }
        manifest["sha256"] = _body_digest(manifest)
        write_bytes_atomic(self.path(MANIFEST), json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8"))
        return manifest
