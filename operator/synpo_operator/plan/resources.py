"""What each stage pod gets (pure): GPUs, CPU and memory per kind of stage, /dev/shm, and the training
processes' global batch. How a generation pod's GPUs are split between engines: plan/engines.py."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from ..api.parallelism import global_batch_problem
from ..api.run import SynPORunSpec
from .graph import IMPROVER, PROMPT_GENERATOR, TRAIN, StageNode, stage_graph
from .quantity import memory_quantity, parse_quantity, share

StageKind = Literal["training", "generation", "scoring", "cpu"]

TRAINING_STAGES = (PROMPT_GENERATOR, IMPROVER, TRAIN)
"""Stages that train a model (one process per GPU, `nodes` pods)."""

GENERATION_STAGES = ("prompts", "base-responses", "responses", "refine", "evaluate")
"""Stages that generate with spec.generation.engine."""


@dataclass(frozen=True)
class PodShape:
    """What each pod of a stage gets, and how many pods (machines) one attempt of the stage spans."""

    kind: StageKind
    gpus: int
    cpu: str | None
    memory: str | None
    nodes: int = 1

    @property
    def processes_per_pod(self) -> int:
        """Worker processes per pod: one per GPU for training (torchrun), one otherwise."""
        return max(self.gpus, 1) if self.kind == "training" else 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.processes_per_pod


def stage_kind(node: StageNode) -> StageKind:
    if node.id.name in TRAINING_STAGES:
        return "training"
    if node.id.name in GENERATION_STAGES:
        return "generation"
    return "scoring" if node.gpu else "cpu"


def _kind_gpus(spec: SynPORunSpec, kind: StageKind) -> int:
    """GPUs of each pod of a kind: its own field, else the spec-wide gpusPerPod (a scorer: at most 1)."""
    r = spec.resources
    if kind == "training":
        return r.gpus_per_pod if r.training.gpus_per_node is None else r.training.gpus_per_node
    if kind == "generation":
        return r.generation_gpus()
    if kind == "scoring":
        return min(r.gpus_per_pod, 1) if r.scoring.gpus_per_pod is None else r.scoring.gpus_per_pod
    return 0


def node_gpus(spec: SynPORunSpec) -> int:
    """The most GPUs any stage pod asks for: the GPU node whose CPU and memory resources.cpu / memory are."""
    return max(_kind_gpus(spec, kind) for kind in ("training", "generation", "scoring"))


def pod_shape(spec: SynPORunSpec, node: StageNode) -> PodShape:
    """The one rule for a stage's pods. CPU stages: resources.cpuStages. GPU stages: their kind's fields; an
    unset cpu / memory is the pod's GPU share of the spec-wide cpu / memory (which are a pod with node_gpus
    GPUs), so a 1-GPU scorer on an 8-GPU node leaves 7/8 of the node to the pods that use the other GPUs."""
    r = spec.resources
    kind = stage_kind(node)
    if kind == "cpu":
        return PodShape(kind, 0, r.cpu_stages.cpu, r.cpu_stages.memory)
    own = {"training": r.training, "generation": r.generation, "scoring": r.scoring}[kind]
    gpus, whole = _kind_gpus(spec, kind), node_gpus(spec)
    part = gpus if gpus else whole  # a GPU stage run on the CPU (0 GPUs) keeps the whole pod's share
    cpu = own.cpu or share(r.cpu, part, whole, memory=False)
    memory = own.memory or share(r.memory, part, whole, memory=True)
    return PodShape(kind, gpus, cpu, memory, nodes=r.training.nodes if kind == "training" else 1)


def gpus_for(spec: SynPORunSpec, node: StageNode) -> int:
    """GPUs requested by each pod of this stage (0: a CPU pod)."""
    return pod_shape(spec, node).gpus


def generation_gpus(spec: SynPORunSpec) -> int:
    """The most GPUs a generation stage's pod gets (what vLLM's tensor parallelism spans)."""
    return max(gpus_for(spec, node) for node in stage_graph(spec) if node.id.name in GENERATION_STAGES)


def global_batch_problems(spec: SynPORunSpec) -> list[str]:
    """Plan-time check of the training stages' batch sizes: each is the GLOBAL batch, split evenly across the
    stage's training processes (PodShape.world_size); a shape that cannot split it never starts."""
    shapes = [pod_shape(spec, node) for node in stage_graph(spec) if stage_kind(node) == "training"]
    if not shapes:
        return []
    processes = shapes[0].world_size
    sections = (("spec.promptGenerator.batchSize", spec.prompt_generator.batch_size),
                ("spec.improver.batchSize", spec.improver.batch_size),
                ("spec.training.batchSize", spec.training.batch_size))
    return [p for field, batch in sections if (p := global_batch_problem(batch, processes, field))]


SHM_PER_GPU = 2 * 2**30
"""/dev/shm per GPU unless resources.sharedMemory says: NCCL's shared-memory transport and proxy buffers, vLLM's
worker message queues and torch's tensor sharing each need a few hundred MiB per process (the 64 MiB container
default makes NCCL fail on its first collective)."""


def shared_memory(spec: SynPORunSpec, shape: PodShape) -> str | None:
    """Size limit of the pod's memory-backed /dev/shm (None: the pod has no GPU and keeps the default)."""
    if not shape.gpus:
        return None
    if spec.resources.shared_memory:
        return spec.resources.shared_memory
    size = Fraction(SHM_PER_GPU * shape.gpus)
    if shape.memory:  # it counts against the pod's memory limit: leave the rest to the processes
        size = min(size, parse_quantity(shape.memory) / 2)
    return memory_quantity(size)
