"""How a stage's container starts its program (pure): the one command every executor runs.

A training stage with more than one training process (plan/resources.PodShape.world_size) runs under
`torchrun`, one process per GPU of the pod; every other stage runs one plain Python process. With one pod
torchrun is `--standalone` (its own rendezvous on localhost). With several pods (nodes > 1) torchrun reads the
rest of its flags from the environment, as under Kubeflow Trainer: torchrun maps each `PET_<FLAG>` variable to
its `--<flag>`, so the command stays the same on every pod and only the environment (`distributed_env`) says
which node a pod is and where node 0 listens.
"""

from __future__ import annotations

from .resources import PodShape

MODULE = "synpo_workloads"


def distributed(shape: PodShape) -> bool:
    """True when the stage runs several training processes (torchrun)."""
    return shape.kind == "training" and shape.world_size > 1


def launch_command(shape: PodShape, stage: str, config_path: str) -> list[str]:
    """The container command of a stage's pods."""
    program = ["-m", MODULE, stage, "--config", config_path]
    if not distributed(shape):
        return ["python", *program]
    standalone = ["--standalone"] if shape.nodes == 1 else []
    return ["torchrun", f"--nproc-per-node={shape.processes_per_pod}", *standalone, *program]


def distributed_env(shape: PodShape, *, master_addr: str, master_port: int,
                    node_rank: str | None) -> dict[str, str]:
    """torchrun's rendezvous for a stage on several pods (empty for one pod): node count, node 0's address and
    port, and this pod's rank (node_rank None: the caller sets PET_NODE_RANK itself, e.g. from a JobSet pod's
    completion index)."""
    if not distributed(shape) or shape.nodes == 1:
        return {}
    env = {"PET_NNODES": str(shape.nodes), "PET_MASTER_ADDR": master_addr, "PET_MASTER_PORT": str(master_port)}
    if node_rank is not None:
        env["PET_NODE_RANK"] = node_rank
    return env
