"""Fake (kwok-managed) nodes of a chosen shape: resources, labels, taints.

The dev cluster registers one untainted 8-GPU node (cluster.DEFAULT_NODE); a test that needs a cluster shaped
like a real one (GPU nodes with an RDMA resource and a GPU taint next to CPU nodes) adds its own with
``add_nodes`` and removes them with ``remove_nodes``. kwok manages every Node carrying its annotation: it
reports it Ready and plays kubelet for the pods the real scheduler binds there.

On a shared cluster, give such nodes a taint of their own (``NodeShape.taints``) so that other tests' pods,
which do not tolerate it, never land there.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .client import ApiError, KubeClient
from .kwok_stages import KWOK_NODE_ANNOTATION, KWOK_NODE_ANNOTATION_VALUE

NODES = "/api/v1/nodes"


@dataclass(frozen=True)
class NodeShape:
    """What a node has (`resources`: allocatable = capacity, Kubernetes quantities) and how it is marked."""

    resources: Mapping[str, str]
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Mapping[str, str], ...] = ()


def node_manifest(name: str, shape: NodeShape) -> dict:
    """A Node object kwok takes over (its annotation); kwok's node-initialize stage fills in the rest of the
    status from the allocatable and capacity given here."""
    resources = {"pods": "110", **{k: str(v) for k, v in shape.resources.items()}}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: KWOK_NODE_ANNOTATION_VALUE, "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node-role.kubernetes.io/agent": "",
                **shape.labels,
            },
        },
        "spec": {"taints": [dict(t) for t in shape.taints]} if shape.taints else {},
        "status": {
            "allocatable": resources,
            "capacity": dict(resources),
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux"},
        },
    }


def _ready(node: Mapping) -> bool:
    """Ready (kwok's heartbeat), and the node lifecycle controller has lifted its not-ready taints."""
    status = node.get("status") or {}
    conds = {c["type"]: c["status"] for c in status.get("conditions") or []}
    lifecycle = [t for t in (node.get("spec") or {}).get("taints") or []
                 if t["key"].startswith("node.kubernetes.io/")]
    return conds.get("Ready") == "True" and not lifecycle


def add_nodes(kube: KubeClient, nodes: Mapping[str, NodeShape], timeout: float = 60) -> list[str]:
    """Register the nodes (name -> shape) and wait until each is Ready and schedulable; returns their names."""
    for name, shape in nodes.items():
        try:
            kube.post(NODES, node_manifest(name, shape))
        except ApiError as e:
            if e.status != 409:
                raise
            kube.delete(f"{NODES}/{name}")  # a leftover of an interrupted run: start from the shape asked for
            kube.wait_gone(f"{NODES}/{name}", timeout=timeout)
            kube.post(NODES, node_manifest(name, shape))
    deadline = time.monotonic() + timeout
    for name in nodes:
        kube.wait_for(f"{NODES}/{name}", _ready, timeout=max(1.0, deadline - time.monotonic()))
    return list(nodes)


def remove_nodes(kube: KubeClient, names: Iterable[str]) -> None:
    """Delete the nodes (their pods are then garbage-collected by the controller-manager)."""
    for name in names:
        kube.delete_if_exists(f"{NODES}/{name}")
