"""Pure rendering of the Kubernetes object that runs a stage: one Job, which carries the stage config (for a
training stage on several nodes, the JobSet around that Job: executors/jobset_manifest.py).

Nothing here talks to an API server; `executors.jobs` creates what these functions return, and
`synpo plan --manifests` prints it. Every choice is deterministic, so a restarted operator renders
byte-identical objects and a create of an existing one is answered 409 AlreadyExists (no duplicates).

Choices (see docs/operator.md):
- Names: `<run>-i<t>-<stage>`. Run names are at most 40 characters,
  which keeps every Job name within 63 and every Indexed-Job pod hostname (`<job>-<index>`) within 63.
  The operator never retries a stage itself (max_attempts=1: Jobs retry their pods, `backoffLimit`), so one
  name per stage is enough; should a later attempt ever be started, it is `<run>-i<t>-<stage>-a<n>`.
- The stage config (`stage.json`) travels in the Job itself, one API write per stage: it is the pod-template
  annotation `synpo.dev/stage-config` (compact JSON), projected into the container as
  `/etc/synpo/stage.json` by a downwardAPI volume. Kubernetes caps all annotations of an object at 256 KiB,
  so a stage config over MAX_STAGE_CONFIG_BYTES is refused (StageConfigTooLarge; the Jobs executor reports
  it as InvalidSpec before starting anything). The Job's `synpo.dev/config-sha256` is the SHA-256 of
  that text.
- Kueue: with `spec.queueName` the Job is created with `suspend: true` and the queue-name label, as Kueue
  expects (it unsuspends the Job on admission); without a queue `suspend` is left unset. The operator
  never changes `spec.suspend` of an existing Job. `spec.workloadPriorityClassName` becomes the
  `kueue.x-k8s.io/priority-class` label (Kueue reads it from the Job when it creates the Workload).
  A sharded stage's Job also says `kueue.x-k8s.io/job-min-parallelism: "1"` (partial admission): Kueue
  admits as many shards at a time as the queue's quota holds, the Job runs the rest as those finish. Whole
  admission would wait forever when shards x GPUs exceed the quota (8 shards x 8 GPUs on 4 GPU nodes).
- Pods run with the restricted Pod Security profile; nothing a user sets can add a hostPath or privileges,
  and the only capability a run can add is IPC_LOCK to training pods (`resources.training.ipcLock`, opt-in, for
  RDMA; it needs a namespace whose Pod Security level allows it).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from ..api.common import API_VERSION, STAGE_CONFIG_ANNOTATION, SecretKeyRef
from ..api.results import BAD_INPUT_EXIT_CODE
from ..api.run import SynPORun, SynPORunSpec
from ..modelinfo import model_size
from ..plan.cache import cache_plan
from ..plan.graph import EVALUATE, PREFLIGHT, STAGES, StageNode, stage_graph
from ..plan.launch import launch_command
from ..plan.planner import Start, plan
from ..plan.resources import gpus_for, pod_shape, shared_memory, stage_kind
from ..plan.stage_config import stage_config
from .jobset_manifest import jobset_from_job

LABEL_RUN = "synpo.dev/run"
LABEL_ITERATION = "synpo.dev/iteration"
LABEL_STAGE = "synpo.dev/stage"
LABEL_STAGE_KEY = "synpo.dev/stage-key"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "synpo-operator"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
ANNOTATION_MIN_PARALLELISM = "kueue.x-k8s.io/job-min-parallelism"
LABEL_PRIORITY_CLASS = "kueue.x-k8s.io/priority-class"
ANNOTATION_ATTEMPT = "synpo.dev/attempt"
ANNOTATION_GPUS = "synpo.dev/gpus-per-pod"
ANNOTATION_CONFIG_HASH = "synpo.dev/config-sha256"
ANNOTATION_STUCK_FAILURE = "synpo.dev/stuck-failure"
"""Set by the Jobs executor on a Job it failed for being stuck (with spec.activeDeadlineSeconds lowered, so
the Job controller removes its pods): why, which is the stage's failure message from then on."""
ANNOTATION_STUCK_FAILED_AT = "synpo.dev/stuck-failed-at"
"""When it did (RFC 3339): the stage's completion time."""
ANNOTATION_STAGE_CONFIG = STAGE_CONFIG_ANNOTATION
MAX_STAGE_CONFIG_BYTES = 192 * 1024
"""Largest stage config embedded in a Job: Kubernetes allows 256 KiB for all annotations of an object
together; the rest is left for the other annotations (ours, and what admission webhooks add to pods)."""
TEST_POD_ANNOTATIONS = "synpo.dev/test-pod-annotations"
FAKE_ANNOTATION_PREFIX = "synpo.dev/fake-"
"""The only pod annotations TEST_POD_ANNOTATIONS may set (the dev cluster's kwok reads them)."""
"""Run annotation (testing only): JSON `{selector: {annotation: value}}` copied onto stage pod templates.
Selectors: "*" (every stage), a stage name ("train") or a stage key ("i1-train"); the more specific wins.
The dev cluster's kwok reads `synpo.dev/fake-*` pod annotations to fake exit codes and results."""

CONTAINER = "stage"
CONFIG_MOUNT = "/etc/synpo"
CONFIG_FILE = "stage.json"
WORKSPACE = "/workspace"
CACHE_DIR = "/cache"
JUDGE_API_KEY_ENV = "SYNPO_JUDGE_API_KEY"
UID = 1000
GPU_RESOURCE = "nvidia.com/gpu"
RUN_KIND = "SynPORun"


def job_name(run: str, key: str, attempt: int = 1) -> str:
    """`<run>-i<t>-<stage>` (deterministic; `-a<n>` only for an operator-level retry n > 1)."""
    return f"{run}-{key}" if attempt <= 1 else f"{run}-{key}-a{attempt}"


def storage_root(spec: SynPORunSpec) -> str:
    """The storage root as a stage pod sees it: the PVC mount (plus subPath) or the URI."""
    if spec.storage.volume is not None:
        sub = spec.storage.volume.sub_path
        return f"{WORKSPACE}/{sub.strip('/')}" if sub else WORKSPACE
    return spec.storage.uri or ""


def stage_labels(run: str, node: StageNode) -> dict[str, str]:
    return {
        LABEL_RUN: run,
        LABEL_ITERATION: str(node.id.iteration),
        LABEL_STAGE: node.id.name,
        LABEL_STAGE_KEY: node.key,
        LABEL_MANAGED_BY: MANAGED_BY,
    }


def owner_reference(run: SynPORun, uid: str | None) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": RUN_KIND,
        "name": run.metadata.name,
        "uid": uid or "<uid of the SynPORun>",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _run_uid(run: SynPORun) -> str | None:
    extra = run.metadata.model_extra or {}
    uid = extra.get("uid")
    return str(uid) if uid else None


def extra_pod_annotations(run: SynPORun, node: StageNode) -> dict[str, str]:
    """Pod annotations requested by the run's `synpo.dev/test-pod-annotations` (testing only; keys
    `synpo.dev/fake-*` only)."""
    raw = (run.metadata.annotations or {}).get(TEST_POD_ANNOTATIONS)
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    merged: dict[str, str] = {}
    for selector in ("*", node.id.name, node.key):
        chosen = doc.get(selector)
        if isinstance(chosen, dict):
            # only the fake kubelet's keys: anything else (AppArmor, sidecar or secret injectors, ...) would
            # let a run's author change how its pods are admitted and run
            merged.update({str(k): str(v) for k, v in chosen.items() if str(k).startswith(FAKE_ANNOTATION_PREFIX)})
    return merged


def _judge_key_refs(spec: SynPORunSpec, node: StageNode) -> list[tuple[int, SecretKeyRef]]:
    """(judge index, its API key's Secret key) of the judges whose key the stage's pods read."""
    if node.id.name not in (EVALUATE, PREFLIGHT):  # the pre-flight asks each judge with its own key
        return []
    return [(index, judge.api_key_secret_ref) for index, judge in enumerate(spec.evaluation.judges)
            if judge.type == "openai" and judge.api_key_secret_ref is not None]


def secret_refs(spec: SynPORunSpec, node: StageNode) -> list[tuple[str, SecretKeyRef]]:
    """(the run field, the Secret key) of every Secret the stage's container reads (_container_env): the
    kubelet names only the Secret and key when one is missing, the user wrote the field."""
    refs = [(f"spec.env[{i}].secretKeyRef ({var.name})", var.secret_key_ref)
            for i, var in enumerate(spec.env) if var.secret_key_ref is not None]
    return refs + [(f"spec.evaluation.judges[{i}].apiKeySecretRef", ref) for i, ref in _judge_key_refs(spec, node)]


def _container_env(spec: SynPORunSpec, node: StageNode) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": CACHE_DIR},
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
        {"name": "SYNPO_CACHE", "value": f"{CACHE_DIR}/synpo"},  # fetched models (synpo_workloads.models)
        {"name": "SYNPO_STAGE_CONFIG", "value": f"{CONFIG_MOUNT}/{CONFIG_FILE}"},
    ]
    user_names = {e.name for e in spec.env}
    env = [e for e in env if e["name"] not in user_names]
    for var in spec.env:
        if var.secret_key_ref is not None:
            env.append({"name": var.name, "valueFrom": {"secretKeyRef": {
                "name": var.secret_key_ref.name, "key": var.secret_key_ref.key}}})
        else:
            env.append({"name": var.name, "value": var.value or ""})
    for n, (index, ref) in enumerate(_judge_key_refs(spec, node)):
        by_ref = {"valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        if n == 0 and JUDGE_API_KEY_ENV not in user_names:
            env.append({"name": JUDGE_API_KEY_ENV, **by_ref})
        env.append({"name": f"SYNPO_JUDGE_{index}_API_KEY", **by_ref})
    return env


def _resources(spec: SynPORunSpec, node: StageNode) -> dict[str, Any]:
    shape = pod_shape(spec, node)
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if shape.cpu:
        requests["cpu"] = limits["cpu"] = shape.cpu
    if shape.memory:
        requests["memory"] = limits["memory"] = shape.memory
    if shape.gpus:
        limits[spec.resources.gpu_resource_name] = str(shape.gpus)
    if shape.kind == "training":  # extended resources: the request defaults to the limit
        limits.update({name: str(count) for name, count in spec.resources.training.extra_resources.items()})
    disk = cache_plan(spec, node, model_size).ephemeral_request
    if disk:
        requests["ephemeral-storage"] = disk
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _compact(value: Any) -> Any:
    """The object without empty lists and maps (the API models' defaults), as a user would write it."""
    if isinstance(value, dict):
        items = {k: _compact(v) for k, v in value.items()}
        return {k: v for k, v in items.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    return value


def _cache_volume(spec: SynPORunSpec, node: StageNode) -> dict[str, Any]:
    """/cache: the shared model-cache PVC (storage.modelCache), else an emptyDir with its size limit."""
    cache = cache_plan(spec, node, model_size)
    if cache.claim_name:
        return {"name": "cache", "persistentVolumeClaim": {"claimName": cache.claim_name}}
    return {"name": "cache", "emptyDir": {"sizeLimit": cache.size_limit} if cache.size_limit else {}}


class StageConfigTooLarge(ValueError):
    """A stage config that does not fit in a Job annotation."""

    def __init__(self, stage: str, size: int, limit: int = MAX_STAGE_CONFIG_BYTES):
        self.stage, self.size, self.limit = stage, size, limit
        super().__init__(f"stage {stage}: its config is {size} bytes, more than the {limit} bytes a Job "
                         f"annotation ({ANNOTATION_STAGE_CONFIG}) may safely hold; shorten the spec")


def _dump(config: dict[str, Any]) -> str:
    return json.dumps(config, separators=(",", ":"), sort_keys=True)


def stage_config_text(run: SynPORun, node: StageNode) -> str:
    """The stage's config (`stage.json`) as the Job carries it: compact JSON, keys sorted (deterministic)."""
    name = run.metadata.name
    namespace = run.metadata.namespace or "default"
    text = _dump(stage_config(run.spec, node, namespace=namespace, run=name, storage_root=storage_root(run.spec)))
    size = len(text.encode())
    if size > MAX_STAGE_CONFIG_BYTES:
        raise StageConfigTooLarge(node.key, size)
    return text


_SKELETON_BOUND = 64 * 1024
"""More than a stage config holds besides the spec (a few paths and references of at most ~2 KiB each)."""


def stage_config_problems(run: SynPORun) -> list[str]:
    """An InvalidSpec message per stage whose config cannot be embedded in its Job. Runs every reconcile, so
    cheap: the spec is the bulk of every stage config, and only a spec near the bound is sized stage by stage."""
    if len(_dump(run.spec.to_api()).encode()) + _SKELETON_BOUND <= MAX_STAGE_CONFIG_BYTES:
        return []
    problems = []
    for node in stage_graph(run.spec):
        try:
            stage_config_text(run, node)
        except StageConfigTooLarge as err:
            problems.append(str(err))
    return problems


# Where the run's fields land in a stage's Job (render_job): read back to name the run field behind a Job field
# the API server or a cluster policy refused. Patterns match inside a JobSet's nested template too.
_RUN_FIELD_OF_JOB_FIELD = (
    (re.compile(r"template\.spec\.nodeSelector"), "spec.resources.nodeSelector"),
    (re.compile(r"template\.spec\.tolerations"), "spec.resources.tolerations"),
    (re.compile(r"template\.spec\.affinity"), "spec.resources.affinity"),
    (re.compile(r"template\.spec\.imagePullSecrets"), "spec.resources.imagePullSecrets"),
    (re.compile(r"template\.spec\.priorityClassName"), "spec.resources.priorityClassName"),
    (re.compile(r"template\.spec\.serviceAccountName"), "spec.resources.serviceAccountName"),
    (re.compile(r"containers\[\d+\]\.image"), "spec.resources.image"),
    (re.compile(r"containers\[\d+\]\.resources"), "spec.resources (cpu, memory, GPUs)"),
    (re.compile(r"containers\[\d+\]\.env"), "spec.env"),
    (re.compile(r"volumes\[\d+\]\.persistentVolumeClaim|volumes\[\d+\]\.emptyDir"),
     "spec.storage (volume, modelCache) / spec.resources.ephemeralStorage"),
    (re.compile(re.escape(LABEL_QUEUE)), "spec.queueName"),
    (re.compile(re.escape(LABEL_PRIORITY_CLASS)), "spec.workloadPriorityClassName"),
)


def run_fields_in(message: str) -> list[str]:
    """The run's fields behind the Job fields an API server message names (in message order, once each)."""
    found: list[tuple[int, str]] = []
    for pattern, field in _RUN_FIELD_OF_JOB_FIELD:
        match = pattern.search(message)
        if match and field not in (f for _, f in found):
            found.append((match.start(), field))
    return [field for _, field in sorted(found)]


def render_job(run: SynPORun, node: StageNode, *, attempt: int = 1, uid: str | None = None) -> dict[str, Any]:
    """The batch/v1 Job that runs one stage (an Indexed Job with one pod per shard for sharded stages)."""
    spec = run.spec
    name = run.metadata.name
    namespace = run.metadata.namespace or "default"
    labels = stage_labels(name, node)
    job_labels = dict(labels)
    if spec.queue_name:
        job_labels[LABEL_QUEUE] = spec.queue_name
    if spec.workload_priority_class_name:
        job_labels[LABEL_PRIORITY_CLASS] = spec.workload_priority_class_name
    config_text = stage_config_text(run, node)
    cache = cache_plan(spec, node, model_size)
    shape = pod_shape(spec, node)
    training = shape.kind == "training"
    if training:  # the interconnect's pod metadata; the stage's own labels win
        labels = {**spec.resources.training.pod_labels, **labels}

    volumes: list[dict[str, Any]] = [
        {"name": "stage-config", "downwardAPI": {"defaultMode": 0o444, "items": [
            {"path": CONFIG_FILE, "fieldRef": {"fieldPath": f"metadata.annotations['{ANNOTATION_STAGE_CONFIG}']"}},
        ]}},
        {"name": "tmp", "emptyDir": {}},
        _cache_volume(spec, node),
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "stage-config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": CACHE_DIR, **({"subPath": cache.sub_path} if cache.sub_path else {})},
    ]
    shm = shared_memory(spec, shape)
    if shm:
        # NCCL, vLLM and torch workers share buffers through /dev/shm; the default 64 MiB is far too small.
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if spec.storage.volume is not None:
        volumes.append({"name": "workspace",
                        "persistentVolumeClaim": {"claimName": spec.storage.volume.claim_name}})
        mounts.append({"name": "workspace", "mountPath": WORKSPACE})

    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.resources.image,
        "imagePullPolicy": spec.resources.image_pull_policy,
        "command": launch_command(pod_shape(spec, node), node.id.name, f"{CONFIG_MOUNT}/{CONFIG_FILE}"),
        "env": _container_env(spec, node),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], **({"add": ["IPC_LOCK"]}
                                                 if training and spec.resources.training.ipc_lock else {})},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    resources = _resources(spec, node)
    if resources:
        container["resources"] = resources

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    # GPU placement (node pool, GPU taints, GPU-model affinity) only where GPU work runs: CPU stages have theirs
    gpu_kind = stage_kind(node) != "cpu"
    place = spec.resources if gpu_kind else spec.resources.cpu_stages
    if place.node_selector:
        pod_spec["nodeSelector"] = dict(place.node_selector)
    if place.tolerations:
        pod_spec["tolerations"] = [t.to_api() for t in place.tolerations]
    if gpu_kind and spec.resources.affinity is not None:
        pod_spec["affinity"] = _compact(spec.resources.affinity.to_api())
    if spec.resources.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in spec.resources.image_pull_secrets]
    if spec.resources.priority_class_name:
        pod_spec["priorityClassName"] = spec.resources.priority_class_name
    if spec.resources.service_account_name:
        pod_spec["serviceAccountName"] = spec.resources.service_account_name
        # A named ServiceAccount is usually there for workload identity (object storage): keep its token.
        pod_spec["automountServiceAccountToken"] = True

    pod_annotations = {**(spec.resources.training.pod_annotations if training else {}),
                       **extra_pod_annotations(run, node)}
    pod_annotations[ANNOTATION_STAGE_CONFIG] = config_text
    pod_annotations[ANNOTATION_GPUS] = str(gpus_for(spec, node))  # GPU-seconds whatever the resource's name
    template_meta: dict[str, Any] = {"labels": labels, "annotations": pod_annotations}

    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "activeDeadlineSeconds": spec.stage_deadline_seconds,
        "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                  "values": [BAD_INPUT_EXIT_CODE]}},
        ]},
        "template": {"metadata": template_meta, "spec": pod_spec},
    }
    if node.shards > 1:
        job_spec["completionMode"] = "Indexed"
        job_spec["completions"] = node.shards
        job_spec["parallelism"] = node.shards
    if spec.queue_name:
        job_spec["suspend"] = True  # creation only: Kueue admits the Job by unsuspending it

    annotations = {
        ANNOTATION_ATTEMPT: str(attempt),
        ANNOTATION_GPUS: str(gpus_for(spec, node)),
        ANNOTATION_CONFIG_HASH: hashlib.sha256(config_text.encode()).hexdigest(),
    }
    if spec.queue_name and node.shards > 1:
        annotations[ANNOTATION_MIN_PARALLELISM] = "1"  # partial admission (module docstring)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name, node.key, attempt),
            "namespace": namespace,
            "labels": job_labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(run, uid or _run_uid(run))],
        },
        "spec": job_spec,
    }


def uses_jobset(spec: SynPORunSpec, node: StageNode) -> bool:
    """A training stage on several nodes runs as a JobSet (one pod per node); everything else as a Job."""
    return pod_shape(spec, node).nodes > 1  # only training stages have nodes


def render_stage(run: SynPORun, start: Start | StageNode, *, uid: str | None = None) -> dict[str, Any]:
    """The object for one stage start (the only one a stage needs: it carries its config): its Job, or for a
    training stage on several nodes the JobSet around that Job."""
    node = start.stage if isinstance(start, Start) else start
    attempt = start.attempt if isinstance(start, Start) else 1
    job = render_job(run, node, attempt=attempt, uid=uid)
    if not uses_jobset(run.spec, node):
        return job
    return jobset_from_job(job, pod_shape(run.spec, node), max_restarts=run.spec.backoff_limit,
                           container=CONTAINER)


def render_run_manifests(run: SynPORun, *, all_stages: bool = False) -> list[dict[str, Any]]:
    """What the operator would create: for the stages that start first, or for every stage (`all_stages`)."""
    if all_stages:
        nodes = stage_graph(run.spec)
    else:
        nodes = [s.stage for s in plan(run.spec, {}, max_attempts=1).start]
    return [render_stage(run, node) for node in nodes]


__all__ = [
    "ANNOTATION_STAGE_CONFIG", "LABEL_ITERATION", "LABEL_MANAGED_BY", "LABEL_PRIORITY_CLASS", "LABEL_QUEUE",
    "LABEL_RUN", "LABEL_STAGE", "LABEL_STAGE_KEY", "MAX_STAGE_CONFIG_BYTES", "STAGES", "TEST_POD_ANNOTATIONS", "StageConfigTooLarge",
    "gpus_for", "job_name", "render_job", "render_run_manifests", "render_stage",
    "secret_refs", "stage_config_problems", "stage_config_text", "storage_root", "uses_jobset",
]
