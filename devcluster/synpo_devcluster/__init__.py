"""Local Kubernetes control plane for development and integration tests (no Docker).

`build` compiles etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok from the Go
module proxy at pinned versions; `cluster` runs them with a fake GPU node; `client` is a tiny REST client.
"""

from .build import ETCD_VERSION, K8S_VERSION, KWOK_VERSION

__all__ = ["K8S_VERSION", "ETCD_VERSION", "KWOK_VERSION"]
