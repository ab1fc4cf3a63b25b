"""Fixtures for tests that need the local Kubernetes control plane (`synpo dev-cluster`).

- ``dev_cluster`` (session): builds the binaries if needed (cold: ~20-30 min), starts the cluster if it is not
  running, yields a ``ClusterInfo`` (kubeconfig, server, token, ca_file, node_name, ...). It stops the cluster at
  the end only if this session started it, no other session still uses it, and SYNPO_DEVCLUSTER_KEEP != "1".
- ``kube`` (session): an admin ``KubeClient`` for it.
- ``namespace`` (function): a fresh namespace (its default ServiceAccount exists), deleted after the test.

Every test under tests/integration/ is marked ``integration``. With no Go toolchain and no cached build the
tests are skipped; set SYNPO_REQUIRE_DEV_CLUSTER=1 to make that an error instead.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from synpo_devcluster import build, cluster
from synpo_devcluster.client import KubeClient

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def dev_cluster() -> Iterator[cluster.ClusterInfo]:
    if not build.is_built() and not shutil.which("go"):
        msg = "dev cluster not built and no Go toolchain on PATH"
        if os.environ.get("SYNPO_REQUIRE_DEV_CLUSTER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    lease = cluster.SessionLease()
    try:
        yield lease.info
    finally:
        lease.release(keep=os.environ.get("SYNPO_DEVCLUSTER_KEEP") == "1")


@pytest.fixture(scope="session")
def kube(dev_cluster: cluster.ClusterInfo) -> KubeClient:
    return dev_cluster.client()


@pytest.fixture
def namespace(kube: KubeClient, request: pytest.FixtureRequest) -> Iterator[str]:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-") or "t"
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    kube.post(
        "/api/v1/namespaces",
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"synpo.dev/test": "true"}},
        },
    )
    # pods cannot be created before the ServiceAccount admission plugin finds the default SA
    kube.wait_for(f"/api/v1/namespaces/{name}/serviceaccounts/default", lambda _: True, timeout=30)
    try:
        yield name
    finally:
        kube.delete_if_exists(f"/api/v1/namespaces/{name}", propagationPolicy="Background")
