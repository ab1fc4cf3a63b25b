"""The Helm chart against a real API server (the dev cluster):

- every rendered manifest (CRDs included) passes `kubectl apply --server-side --dry-run=server`, so the API
  server's own validation (schemas, RBAC escalation checks, Pod Security fields) accepts the chart;
- least privilege, for real: the chart's ServiceAccount and RBAC are created, a bound token is requested for
  the ServiceAccount (TokenRequest), and what the operator needs works while what it must never do is 403.

Needs helm and kubectl (`bash scripts/install-kube-tools.sh`; missing binaries fail the test).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from synpo_devcluster.client import ApiError, KubeClient
from synpo_operator.api.crd import KubeDumper

pytestmark = pytest.mark.integration

# tests/packaging has no __init__.py (it would shadow the `packaging` library); load its helpers by path
_spec = importlib.util.spec_from_file_location(
    "synpo_chart_helpers", Path(__file__).resolve().parents[1] / "packaging" / "chart_helpers.py")
chart = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chart)

FIELD_MANAGER = "synpo-helm-tests"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


@pytest.fixture(scope="module")
def helm() -> str:
    return chart.tool("helm")


@pytest.fixture(scope="module")
def kubectl() -> str:
    return chart.tool("kubectl")


def kubectl_apply(kubectl: str, cluster, docs: list[dict], *, dry_run: bool) -> str:
    args = [kubectl, "apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "--force-conflicts", "-f", "-"]
    if dry_run:
        args.insert(2, "--dry-run=server")
    env = {**os.environ, "KUBECONFIG": cluster.kubeconfig}
    proc = subprocess.run(args, input=yaml.dump_all(docs, Dumper=KubeDumper, sort_keys=False), capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, f"kubectl apply failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def make_namespace(kube: KubeClient, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kube.post("/api/v1/namespaces", {"metadata": {"name": name, "labels": {"synpo.dev/test": "true"}}})
    return name


@pytest.fixture
def extra_namespaces(kube: KubeClient):
    made: list[str] = []

    def make(prefix: str = "watched") -> str:
        made.append(make_namespace(kube, prefix))
        return made[-1]

    yield make
    for ns in made:
        kube.delete_if_exists(f"/api/v1/namespaces/{ns}", propagationPolicy="Background")


@pytest.fixture(scope="module")
def crds(kube: KubeClient, kubectl: str, dev_cluster) -> None:
    """The repo's CRDs, applied for real (idempotent; identical to the chart's crds/)."""
    docs = [yaml.safe_load(p.read_text()) for p in sorted((chart.ROOT / "crds").glob("*.yaml"))]
    kubectl_apply(kubectl, dev_cluster, docs, dry_run=False)
    for d in docs:
        kube.wait_for(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{d['metadata']['name']}",
                      lambda o: any(c["type"] == "Established" and c["status"] == "True"
                                    for c in (o.get("status") or {}).get("conditions") or []), timeout=60)
    # after a CRD update the API server re-initialises the resource's storage (429 until it is done)
    deadline = time.monotonic() + 60
    for plural in ("synporuns", "synposchedules"):
        while True:
            try:
                kube.get(f"/apis/synpo.dev/v1alpha1/{plural}", limit=1)
                break
            except ApiError as e:
                if e.status not in (404, 429, 503) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


# ---- server-side dry run --------------------------------------------------------------------------------
@pytest.mark.parametrize("scope", ["cluster", "namespaced", "monitoring", "custom"])
def test_chart_applies_with_server_side_dry_run(helm, kubectl, kube, dev_cluster, crds, namespace,
                                                extra_namespaces, scope):
    values: dict = {
        "cluster": {"rbac": {"scope": "cluster"}},
        "namespaced": {"rbac": {"scope": "namespaced"},
                       "watchNamespaces": [extra_namespaces(), extra_namespaces()]},
        "monitoring": {"metrics": {"serviceMonitor": {"enabled": True}}, "grafana": {"dashboard": {"enabled": True}}},
        "custom": {"image": {"repository": "registry.example/synpo/operator", "tag": "dev"},
                   "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
                   "logLevel": "debug", "operator": {"maxActiveRuns": 2, "maxActiveRunsPerNamespace": 1}},
    }[scope]
    release = f"dry-{uuid.uuid4().hex[:6]}"
    docs = chart.render(helm, values, namespace=namespace, release=release, include_crds=True)
    # The dev cluster has no Prometheus Operator: the ServiceMonitor CRD is absent there (the chart tests
    # check the ServiceMonitor's shape; everything else goes to the API server).
    sent = [d for d in docs if d["kind"] != "ServiceMonitor"]
    out = kubectl_apply(kubectl, dev_cluster, sent, dry_run=True)
    for d in sent:
        assert f"{d['metadata']['name']} serverside-applied (server dry run)" in out, (d["kind"], out)
    # a dry run leaves nothing behind
    assert not kube.exists(f"/apis/apps/v1/namespaces/{namespace}/deployments/{release}-synpo-operator")


def test_server_rejects_what_the_restricted_profile_forbids(helm, kubectl, dev_cluster, crds, namespace, kube):
    """The namespace enforces Pod Security "restricted": the chart's Deployment is admitted as rendered."""
    kube.patch(f"/api/v1/namespaces/{namespace}", {"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}})
    docs = chart.render(helm, {}, namespace=namespace, release="psa")
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "psa-check", "namespace": namespace},
           "spec": dep["spec"]["template"]["spec"] | {"serviceAccountName": "default"}}
    # Pod admission is where Pod Security is enforced (Deployments only warn): dry-run the pod itself
    kube.post(f"/api/v1/namespaces/{namespace}/pods", pod, dryRun="All")
    bad = yaml.safe_load(yaml.safe_dump(pod))
    bad["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    with pytest.raises(ApiError) as e:
        kube.post(f"/api/v1/namespaces/{namespace}/pods", bad, dryRun="All")
    assert e.value.status == 403 and "allowPrivilegeEscalation" in str(e.value)


# ---- least privilege, for real --------------------------------------------------------------------------
def _wait_allowed(sa: KubeClient, verb: str, resource: str, namespace: str | None, group: str) -> None:
    """RBAC objects reach the authorizer through an informer: wait until the grant is visible."""
    deadline = time.monotonic() + 30
    while not sa.can_i(verb, resource, namespace, group=group):
        assert time.monotonic() < deadline, f"RBAC never granted {verb} {group}/{resource} in {namespace}"
        time.sleep(0.25)


def _forbidden(call, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as e:
        call(*args, **kwargs)
    assert e.value.status == 403, e.value
    return e.value


def _suspended_job(name: str) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"suspend": True, "backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": "stage", "image": "synpo/workloads:dev"}]}}}}


@pytest.fixture
def installed_rbac(helm, kubectl, kube: KubeClient, dev_cluster, crds, namespace):
    """Create the chart's ServiceAccount + RBAC for real (namespaced or cluster scope); remove the
    cluster-scoped objects afterwards (the namespaced ones go with their namespaces)."""
    created: list[dict] = []

    def install(values: dict) -> tuple[str, KubeClient]:
        release = f"lp-{uuid.uuid4().hex[:6]}"
        docs = [d for d in chart.render(helm, values, namespace=namespace, release=release)
                if d["kind"] in RBAC_KINDS]
        kubectl_apply(kubectl, dev_cluster, docs, dry_run=False)
        created.extend(d for d in docs if d["kind"].startswith("Cluster"))
        (sa,) = [d for d in docs if d["kind"] == "ServiceAccount"]
        token = kube.request_token(namespace, sa["metadata"]["name"], expiration_seconds=3600)
        return release, kube.with_token(token)

    yield install
    for d in created:
        plural = "clusterroles" if d["kind"] == "ClusterRole" else "clusterrolebindings"
        kube.delete_if_exists(f"/apis/rbac.authorization.k8s.io/v1/{plural}/{d['metadata']['name']}")


def test_namespaced_rbac_allows_the_operator_and_nothing_more(installed_rbac, kube, dev_cluster, namespace,
                                                              extra_namespaces):
    watched = extra_namespaces("watched")
    unwatched = extra_namespaces("unwatched")
    release, sa = installed_rbac({"rbac": {"scope": "namespaced"}, "watchNamespaces": [watched]})
    _wait_allowed(sa, "create", "jobs", watched, "batch")

    review = sa.post("/apis/authentication.k8s.io/v1/selfsubjectreviews",
                     {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    assert review["status"]["userInfo"]["username"].startswith(f"system:serviceaccount:{namespace}:")

    # allowed: what the operator does
    runs = f"/apis/synpo.dev/v1alpha1/namespaces/{watched}/synporuns"
    assert sa.get(runs)["items"] == []
    assert sa.get(f"/apis/synpo.dev/v1alpha1/namespaces/{watched}/synposchedules")["items"] == []
    job = sa.post(f"/apis/batch/v1/namespaces/{watched}/jobs", _suspended_job("lp-check"))
    assert job["metadata"]["name"] == "lp-check"
    assert sa.get(f"/apis/batch/v1/namespaces/{watched}/jobs")["items"]
    sa.get(f"/api/v1/namespaces/{watched}/pods")
    sa.post(f"/api/v1/namespaces/{watched}/events", {
        "metadata": {"generateName": "lp-check-"}, "type": "Normal", "reason": "Check", "message": "rbac",
        "involvedObject": {"kind": "Job", "namespace": watched, "name": "lp-check", "apiVersion": "batch/v1"}})
    sa.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/synporuns.synpo.dev")
    sa.get("/api/v1/namespaces")
    sa.delete(f"/apis/batch/v1/namespaces/{watched}/jobs/lp-check", propagationPolicy="Background")
    # leader election: the operator's own Lease (--lease-name: the release's full name) in the release
    # namespace, and no other Lease to read or renew (another controller's leader election is safe from it)
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    own = f"{release}-synpo-operator"
    lease = sa.post(leases, {"metadata": {"name": own}, "spec": {"holderIdentity": "op-a"}})
    lease["spec"]["holderIdentity"] = "op-b"
    assert sa.put(f"{leases}/{own}", lease)["spec"]["holderIdentity"] == "op-b"
    other = kube.post(leases, {"metadata": {"name": "another-controller"}, "spec": {"holderIdentity": "x"}})
    _forbidden(sa.get, f"{leases}/another-controller")
    _forbidden(sa.put, f"{leases}/another-controller", other)
    _forbidden(sa.post, f"/apis/coordination.k8s.io/v1/namespaces/{watched}/leases", {"metadata": {"name": "x"}})
    _forbidden(sa.delete, f"{leases}/{own}")

    # forbidden: secrets, exec, pod create, job rewrite (update: the patch it holds only fails a stuck Job), nodes, CRD writes, other namespaces, cluster-wide runs
    _forbidden(sa.get, f"/api/v1/namespaces/{watched}/secrets")
    # no configmaps: stage configs travel in their Jobs
    _forbidden(sa.post, f"/api/v1/namespaces/{watched}/configmaps", {"metadata": {"name": "lp-check"},
                                                                     "data": {"stage.json": "{}"}})
    _forbidden(sa.get, f"/api/v1/namespaces/{watched}/secrets/anything")
    _forbidden(sa.post, f"/api/v1/namespaces/{watched}/pods/anything/exec", None,
               command="sh", stdout="true")
    _forbidden(sa.post, f"/api/v1/namespaces/{watched}/pods", {
        "metadata": {"name": "nope"}, "spec": {"containers": [{"name": "c", "image": "x"}]}})
    _forbidden(sa.put, f"/apis/batch/v1/namespaces/{watched}/jobs/anything", {"spec": {"suspend": False}})
    _forbidden(sa.delete, f"/api/v1/nodes/{dev_cluster.node_name}", dryRun="All")
    _forbidden(sa.patch, f"/api/v1/nodes/{dev_cluster.node_name}", {"metadata": {"labels": {"x": "y"}}})
    _forbidden(sa.delete, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/synporuns.synpo.dev",
               dryRun="All")
    _forbidden(sa.get, f"/apis/synpo.dev/v1alpha1/namespaces/{unwatched}/synporuns")
    _forbidden(sa.post, f"/apis/batch/v1/namespaces/{unwatched}/jobs", _suspended_job("nope"))
    _forbidden(sa.get, "/apis/synpo.dev/v1alpha1/synporuns")
    _forbidden(sa.post, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
        "metadata": {"name": "nope"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                                  "name": "cluster-admin"},
        "subjects": [{"kind": "User", "name": "x"}]})
    assert not sa.can_i("create", "pods", watched, group="")
    assert not sa.can_i("update", "jobs", watched, group="batch")
    assert not sa.can_i("create", "synposchedules", watched, group="synpo.dev")
    # allowed but absent (404, not 403): the status subresource of a run, deleting a run (schedules do)
    for call, path, body in [
        (sa.patch, f"{runs}/absent/status", {"status": {"phase": "Running"}}),
        (sa.delete, f"{runs}/absent", None),
    ]:
        with pytest.raises(ApiError) as e:
            call(path, body) if body is not None else call(path)
        assert e.value.status == 404, e.value

def test_cluster_rbac_reaches_every_namespace_but_no_secrets(installed_rbac, dev_cluster, extra_namespaces):
    anywhere = extra_namespaces("anywhere")
    _, sa = installed_rbac({"rbac": {"scope": "cluster"}})
    _wait_allowed(sa, "list", "synporuns", None, "synpo.dev")
    sa.get("/apis/synpo.dev/v1alpha1/synporuns")
    sa.get(f"/apis/synpo.dev/v1alpha1/namespaces/{anywhere}/synporuns")
    sa.post(f"/apis/batch/v1/namespaces/{anywhere}/jobs", _suspended_job("lp-check"), dryRun="All")
    _forbidden(sa.get, "/api/v1/secrets")
    _forbidden(sa.get, f"/api/v1/namespaces/{anywhere}/secrets")
    _forbidden(sa.post, f"/api/v1/namespaces/{anywhere}/pods/anything/exec", None, command="sh")
    _forbidden(sa.delete, f"/api/v1/nodes/{dev_cluster.node_name}", dryRun="All")
