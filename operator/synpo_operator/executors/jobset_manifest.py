"""Pure rendering of a training stage on several nodes: a JobSet (jobset.x-k8s.io/v1alpha2) around the stage's Job.

Why JobSet: it is the SIG's API for a group of pods that live and die together (Kubeflow Trainer v2 builds on
it, Kueue admits it natively), with a headless Service that gives every pod a stable DNS name, so torchrun's
rendezvous needs no launcher of ours.

Shape (choices):
- One replicatedJob `node`, replicas 1, whose Job is Indexed with parallelism = completions = nodes: one pod per
  node, node rank = the pod's completion index, and the leader (index 0) is always `<jobset>-node-0-0.<jobset>`
  (JobSet's subdomain). The Job is the one `render_job` renders for one node (same pod template, config
  annotation, podFailurePolicy), so nothing about the pod is written twice.
- Retries: a failed pod fails its Job at once (backoffLimit 0) and JobSet restarts the whole group (every rank
  must rejoin the rendezvous), at most `spec.backoffLimit` times (failurePolicy.maxRestarts). Bad input (the
  Job's podFailurePolicy FailJob on BAD_INPUT_EXIT_CODE: Job reason PodFailurePolicy) and the stage deadline
  (DeadlineExceeded) fail the JobSet without a restart, as they fail today's Jobs.
- Kueue: the queue label and `suspend: true` move from the Job to the JobSet (Kueue admits the JobSet).
- Names: `<run>-i<t>-<stage>` like Jobs, shortened with a hash when the pods' names
  (`<jobset>-node-0-<index>-<5 chars>`) would pass 63 characters.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from ..api.common import JOBSET_API_VERSION
from ..plan.launch import distributed_env
from ..plan.resources import PodShape

REPLICATED_JOB = "node"
MASTER_PORT = 29500
"""torchrun's default rendezvous port."""
LABEL_JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"
"""Set by the JobSet controller on its Jobs and pods."""
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
MAX_NODES = 128
_POD_SUFFIX = f"-{REPLICATED_JOB}-0-{MAX_NODES - 1}-abcde"
MAX_NAME = 63 - len(_POD_SUFFIX)
"""Longest JobSet name whose pods' names stay within 63 characters (JobSet's own validation)."""
# Job failure reasons that must not restart the group: they fail a single-node Job without a retry too.
NO_RESTART_REASONS = ("PodFailurePolicy", "DeadlineExceeded")


def jobset_name(job_name: str) -> str:
    """The stage Job's name, or its first characters and a hash when pod names would be too long."""
    if len(job_name) <= MAX_NAME:
        return job_name
    digest = hashlib.sha256(job_name.encode()).hexdigest()[:6]
    return f"{job_name[:MAX_NAME - 7].rstrip('-')}-{digest}"


def leader_address(name: str) -> str:
    """The stable DNS name of node rank 0 (the Indexed Job's pod 0 under the JobSet's headless Service)."""
    return f"{name}-{REPLICATED_JOB}-0-0.{name}"


def _rendezvous_env(shape: PodShape, master_addr: str) -> list[dict[str, Any]]:
    """torchrun's PET_* env (plan/launch.distributed_env) as container env; the node rank is the pod's
    completion index, known only inside the pod (downward API)."""
    env = distributed_env(shape, master_addr=master_addr, master_port=MASTER_PORT, node_rank=None)
    return [*({"name": k, "value": v} for k, v in env.items()),
            {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {
                "fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}}]


def jobset_from_job(job: dict[str, Any], shape: PodShape, *, max_restarts: int, container: str) -> dict[str, Any]:
    """The JobSet running `job` (a rendered one-pod stage Job) on `shape.nodes` pods."""
    nodes = shape.nodes
    job = copy.deepcopy(job)
    meta, spec = job["metadata"], job["spec"]
    name = jobset_name(meta["name"])
    labels = dict(meta.get("labels") or {})
    suspend = spec.pop("suspend", None)  # Kueue suspends the JobSet, not its Job
    spec.update({"completionMode": "Indexed", "completions": nodes, "parallelism": nodes, "backoffLimit": 0})
    pod = spec["template"]["spec"]
    for c in pod["containers"]:
        if c["name"] == container:
            c["env"] = [*c.get("env", []), *_rendezvous_env(shape, leader_address(name))]
            c["ports"] = [{"name": "rendezvous", "containerPort": MASTER_PORT}]
    js_spec: dict[str, Any] = {
        "replicatedJobs": [{"name": REPLICATED_JOB, "replicas": 1, "template": {"spec": spec}}],
        "network": {"enableDNSHostnames": True, "subdomain": name, "publishNotReadyAddresses": True},
        "successPolicy": {"operator": "All"},
        "failurePolicy": {"maxRestarts": max_restarts, "rules": [
            {"name": "noRestart", "action": "FailJobSet", "onJobFailureReasons": list(NO_RESTART_REASONS)},
        ]},
    }
    if suspend is not None:
        js_spec["suspend"] = suspend
    return {
        "apiVersion": JOBSET_API_VERSION,
        "kind": "JobSet",
        "metadata": {**meta, "name": name, "labels": labels},
        "spec": js_spec,
    }
