"""Training checkpoints on the run's storage, so a restarted stage resumes on any node.

A stage's checkpoints live at `<output>/checkpoints` (stages/_common.checkpoints_dir). On a local path or a PVC
the Trainer writes there directly (every pod of a JobSet mounts the same volume). On object storage the Trainer
writes into a local directory of the pod (`local_dir`), and after each save (`Uploader`, a TrainerCallback)
every process puts the files it wrote into `<output>/checkpoints/checkpoint-<step>/`; rank 0 then writes that
checkpoint's manifest (store.StageWriter: the objects checked against one listing, size and ETag), last. A
checkpoint counts only with a valid manifest whose files all match (store.verify): a kill during an upload
leaves the previous one. The newest two complete checkpoints are kept; older ones lose their manifest first.

On (re)start `resume_point` picks the newest complete checkpoint on rank 0, tells every process, and the first
process of each node downloads it into its local directory: a pod that never saw the checkpoint resumes too.

Which process puts what (transformers' Trainer, full state dicts): rank 0 writes everything except the other
processes' `rng_state_<rank>.pth`, which each of them writes into its own node's directory.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import shutil
from typing import Any

from . import store

log = logging.getLogger(__name__)

PREFIX = "checkpoint-"
KEEP = 2
"""Complete checkpoints kept on the store (the Trainer's save_total_limit locally)."""
_NAME = re.compile(r"^checkpoint-(\d+)$")


def local_dir(checkpoints: str) -> str:
    """Where the Trainer writes: the checkpoints directory itself, or on object storage a directory of this pod
    keyed by the URI (and the node: processes of different pods on one machine, as in local runs, keep apart)."""
    if not store.is_uri(checkpoints):
        return store._local(checkpoints)
    return f"{_local_base(checkpoints)}-node{os.environ.get('GROUP_RANK', '0')}"


def _local_base(checkpoints: str) -> str:
    key = hashlib.sha256(checkpoints.encode()).hexdigest()[:16]
    root = os.environ.get("SYNPO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "synpo")
    return os.path.join(root, "checkpoints", key)


def _steps(checkpoints: str) -> list[int]:
    """Steps of the checkpoint directories on the store, newest first (complete or not)."""
    return sorted((int(m.group(1)) for m in map(_NAME.match, store._listdir(checkpoints)) if m), reverse=True)


def newest_complete(checkpoints: str) -> str | None:
    """Name of the newest checkpoint on the store whose manifest is there and whose files all match."""
    for step in _steps(checkpoints):
        path = store.join(checkpoints, f"{PREFIX}{step}")
        if store.verify(path):
            return f"{PREFIX}{step}"
    return None


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def _rank() -> int:
    dist = _dist()
    return dist.get_rank() if dist else 0


def from_rank_zero(value: Any) -> Any:
    """Rank 0's value on every process (collective on several processes)."""
    dist = _dist()
    if not dist:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def resume_point(checkpoints: str) -> str | None:
    """The local checkpoint directory to resume from, the same step on every process, or None. Collective when
    training runs on several processes (call it on all of them)."""
    from .training import last_checkpoint

    if not store.is_uri(checkpoints):
        return last_checkpoint(checkpoints)
    dist = _dist()
    name = from_rank_zero(newest_complete(checkpoints) if _rank() == 0 else None)
    local = local_dir(checkpoints)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        shutil.rmtree(local, ignore_errors=True)  # leftovers of an earlier attempt on this node
        if name:
            _download(store.join(checkpoints, name), os.path.join(local, name))
    if dist:
        dist.barrier()
    return os.path.join(local, name) if name else None


def _download(remote: str, target: str) -> None:
    manifest = store.load_manifest(remote) or {}
    tmp = target + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    for rel in sorted(manifest.get("files", {})):
        store.download_file(store.join(remote, rel), os.path.join(tmp, *rel.split("/")))
    os.replace(tmp, target)
    log.info("checkpoint %s: downloaded %d files into %s", remote, len(manifest.get("files", {})), target)


def _owned(directory: str, rank: int) -> list[str]:
    """Files of a local checkpoint directory this process puts (see the module docstring)."""
    out = []
    for dirpath, _dirs, filenames in os.walk(directory):
        for filename in filenames:
            rel = os.path.relpath(os.path.join(dirpath, filename), directory).replace(os.sep, "/")
            other_rng = re.fullmatch(r"rng_state_(\d+)\.pth", rel)
            if (rank == 0 and not (other_rng and int(other_rng.group(1)) != 0)) or rel == f"rng_state_{rank}.pth":
                out.append(rel)
    return sorted(out)


def upload(checkpoints: str, step: int) -> None:
    """Put this process's files of checkpoint `step` on the store; rank 0 then commits it with its manifest and
    prunes older ones. Collective on several processes."""
    dist = _dist()
    if dist:
        dist.barrier()  # every process has written its files
    rank = _rank()
    name = f"{PREFIX}{step}"
    remote = store.join(checkpoints, name)
    local = os.path.join(local_dir(checkpoints), name)
    sent = {rel: store.upload_file(os.path.join(local, rel), store.join(remote, rel)) for rel in _owned(local, rank)}
    parts: list[Any] = [None] * dist.get_world_size() if dist else [sent]
    if dist:
        dist.all_gather_object(parts, sent)
    if rank == 0:
        writer = store.StageWriter(remote, {"stage": "checkpoint", "step": step})
        for part in parts:
            writer.record_objects(part)
        writer.finish({"step": step})
        prune(checkpoints)
        log.info("checkpoint %s: on the store (%d files)", remote, sum(len(p) for p in parts))
    if dist:
        dist.barrier()  # no process trains on (or is killed) before the checkpoint is committed


def prune(checkpoints: str, keep: int = KEEP) -> None:
    """Remove all but the newest `keep` complete checkpoints (and every incomplete one): manifest first, so a
    checkpoint half removed is never taken for complete."""
    kept = 0
    for step in _steps(checkpoints):
        path = store.join(checkpoints, f"{PREFIX}{step}")
        if kept < keep and store.load_manifest(path) is not None:
            kept += 1
            continue
        store._remove(store.join(path, store.MANIFEST))
        store._remove(path)


def drop(checkpoints: str) -> None:
    """Remove the checkpoints (store and local copies: every node's where the cache is a shared volume):
    resume state is useless once the model is saved, and would double the stage's disk use."""
    if store.is_uri(checkpoints):
        for path in glob.glob(glob.escape(_local_base(checkpoints)) + "-node*"):
            shutil.rmtree(path, ignore_errors=True)
    store._remove(checkpoints)


def trainer_callback(checkpoints: str):
    """The Uploader callback (object storage only; None otherwise)."""
    if not store.is_uri(checkpoints):
        return None
    from transformers import TrainerCallback

    class Uploader(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            upload(checkpoints, state.global_step)

    return Uploader()
