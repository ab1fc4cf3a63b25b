"""Security against the real API server (issue #8).

- Stage pods pass Pod Security "restricted" for real: a run succeeds in a namespace that *enforces* it, and
  every Job the operator created has the restricted security context, no hostPath, no privilege.
- Secrets only by reference: a Secret with a unique value is referenced through spec.env secretKeyRef and the
  openai judge's apiKeySecretRef; after the run the value appears nowhere — not in the run object (status
  included), the operator's log (--verbose), Events, /metrics, Jobs, ConfigMaps or pods — and the Jobs hold
  secretKeyRefs.
- Storage paths cannot escape the run's root: '..' segments are refused at apply time (CEL) — the models'
  half is tests/reliability/test_security_models.py.
- No field lets a user mount a host path or run privileged: such fields are unknown fields (400, Strict).
- Least privilege that is also sufficient: the operator runs a run to success with nothing but the Helm
  chart's ServiceAccount token (namespaced RBAC) and still cannot read Secrets, impersonate, mint tokens or
  reach pods' exec/attach/port-forward/log. The chart's other forbidden actions are checked in
  test_helm_install.py (not repeated here).
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
import yaml
from reliability.test_security_models import ESCAPES

from synpo_devcluster.client import ApiError

from .test_helm_install import _forbidden, _wait_allowed, helm, installed_rbac, kubectl  # noqa: F401 - fixture  # noqa: F401 - fixtures
from .test_operator import JOBS, PODS, RUNS, Operator, crds, operator, run_doc, wait_run  # noqa: F401

pytestmark = pytest.mark.integration

JUDGE = {"type": "openai", "endpoint": "http://judge.invalid:8000/v1", "model": "judge",
         "apiKeySecretRef": {"name": "judge-api", "key": "token"}}


def _plant_secrets(kube, ns: str) -> str:
    value = f"synpo-canary-{uuid.uuid4().hex}"
    for name in ("judge-api", "hf"):
        kube.post(f"/api/v1/namespaces/{ns}/secrets", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "type": "Opaque", "stringData": {"token": value}})
    return value


def _secret_run(name: str) -> dict:
    doc = run_doc(name)
    doc["spec"]["evaluation"] = {"judges": [JUDGE]}
    doc["spec"]["env"] = [{"name": "HF_TOKEN", "secretKeyRef": {"name": "hf", "key": "token"}}]
    return doc


def _restricted(kube, ns: str) -> None:
    kube.patch(f"/api/v1/namespaces/{ns}", {"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest",
        "pod-security.kubernetes.io/warn": "restricted"}}})


def _check_restricted_jobs(kube, ns: str, run: str) -> None:
    jobs = kube.get(JOBS.format(ns=ns), labelSelector=f"synpo.dev/run={run}")["items"]
    assert len(jobs) == 11  # the pre-flight and the 10 SynPO stages
    for job in jobs:
        pod = job["spec"]["template"]["spec"]
        text = json.dumps(pod)
        assert "hostPath" not in text and '"privileged": true' not in text and "hostNetwork" not in text
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod.get("automountServiceAccountToken") is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
            assert sc.get("privileged") in (None, False) and sc.get("readOnlyRootFilesystem") is True
        # every Job really got its pods past admission
        pods = kube.get(PODS.format(ns=ns), labelSelector=f"job-name={job['metadata']['name']}")["items"]
        assert pods, f"no pod admitted for {job['metadata']['name']}"


def test_restricted_namespace_and_secrets_never_leak(kube, crds, namespace, tmp_path):  # noqa: F811
    _restricted(kube, namespace)
    value = _plant_secrets(kube, namespace)
    op = Operator(kube_config(kube, tmp_path), namespace, tmp_path, extra_args=("--verbose",))
    op.start()
    try:
        kube.post(RUNS.format(ns=namespace), _secret_run("secretive"))
        done = wait_run(kube, namespace, "secretive", lambda s: s.get("phase") in ("Succeeded", "Failed"),
                        timeout=180)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        _check_restricted_jobs(kube, namespace, "secretive")
        metrics = op.metrics()
    finally:
        op.stop()
        _release(kube, namespace)

    jobs = kube.get(JOBS.format(ns=namespace))["items"]
    evaluate = next(j for j in jobs if j["metadata"]["labels"]["synpo.dev/stage"] == "evaluate")
    env = {e["name"]: e for e in evaluate["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SYNPO_JUDGE_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "judge-api", "key": "token"}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert "value" not in env["SYNPO_JUDGE_API_KEY"] and "value" not in env["HF_TOKEN"]

    places = {
        "run object": json.dumps(kube.get(f"{RUNS.format(ns=namespace)}/secretive")),
        "operator log": op.logs(),
        "events": json.dumps(kube.get(f"/api/v1/namespaces/{namespace}/events")),
        "metrics": metrics,
        "jobs": json.dumps(jobs),
        "configmaps": json.dumps(kube.get(f"/api/v1/namespaces/{namespace}/configmaps")),
        "pods": json.dumps(kube.get(PODS.format(ns=namespace))),
    }
    leaks = [where for where, text in places.items() if value in text]
    assert not leaks, f"the secret value leaked into: {leaks}"
    assert len(op.logs()) > 1000, "the log is suspiciously empty: --verbose not in effect?"
    print(f"RELIABILITY security=secret-canary places_searched={len(places)} "
          f"bytes_searched={sum(map(len, places.values()))} leaks=0")


def _release(kube, ns: str) -> None:
    """The operator is gone: drop its finalizers so the namespace fixture can delete the namespace."""
    for run in kube.get(RUNS.format(ns=ns)).get("items", []):
        if run["metadata"].get("finalizers"):
            kube.patch(f"{RUNS.format(ns=ns)}/{run['metadata']['name']}", {"metadata": {"finalizers": None}})


def kube_config(kube, tmp_path: Path, token: str | None = None) -> str:
    path = tmp_path / f"kubeconfig-{uuid.uuid4().hex[:6]}"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": kube.server, "certificate-authority": kube.ca_file}}],
        "users": [{"name": "u", "user": {"token": token or kube.token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    return str(path)


# ---- storage paths ---------------------------------------------------------------------------------------



@pytest.mark.parametrize("field, value", ESCAPES, ids=[json.dumps(v) for _, v in ESCAPES])
def test_path_escape_is_rejected_at_apply_time(kube, crds, namespace, field, value):  # noqa: F811
    doc = run_doc("escape")
    doc["spec"][field] = value
    with pytest.raises(ApiError) as err:
        kube.post(RUNS.format(ns=namespace), doc, fieldValidation="Strict", dryRun="All")
    assert err.value.status == 422, err.value
    assert "must not contain '..'" in str(err.value) and f"spec.{field}" in str(err.value), err.value


@pytest.mark.parametrize("uri", ["s3://bucket/..hidden/runs", "s3://bucket/runs..", "runs/a..b"])
def test_dots_that_are_not_a_parent_segment_are_fine(kube, crds, namespace, uri):  # noqa: F811
    doc = run_doc("dots")
    doc["spec"]["storage"] = {"uri": uri}
    kube.post(RUNS.format(ns=namespace), doc, fieldValidation="Strict", dryRun="All")


def test_path_escape_in_a_schedule_template_is_rejected(kube, crds, namespace):  # noqa: F811
    run = run_doc("x")
    doc = {"apiVersion": "synpo.dev/v1alpha1", "kind": "SynPOSchedule", "metadata": {"name": "escape"},
           "spec": {"schedule": "0 * * * *", "runTemplate": {"spec": {**run["spec"], "storage": {
               "volume": {"claimName": "ws", "subPath": "a/../../b"}}}}}}
    with pytest.raises(ApiError) as err:
        kube.post(f"/apis/synpo.dev/v1alpha1/namespaces/{namespace}/synposchedules", doc,
                  fieldValidation="Strict", dryRun="All")
    assert err.value.status == 422 and "must not contain '..'" in str(err.value), err.value


# ---- host paths, privileges ------------------------------------------------------------------------------

INJECTIONS = [
    ("spec", "volumes", [{"name": "host", "hostPath": {"path": "/"}}]),
    ("spec", "hostPath", {"path": "/var/run/docker.sock"}),
    ("spec", "securityContext", {"privileged": True, "runAsUser": 0}),
    ("spec", "hostNetwork", True),
    ("spec", "podTemplate", {"spec": {"hostPID": True}}),
    ("spec.resources", "securityContext", {"privileged": True}),
    ("spec.resources", "privileged", True),
    ("spec.resources", "volumes", [{"name": "h", "hostPath": {"path": "/etc"}}]),
    ("spec.resources", "volumeMounts", [{"name": "h", "mountPath": "/host"}]),
    ("spec.resources", "capabilities", {"add": ["SYS_ADMIN"]}),
    ("spec.resources", "hostIPC", True),
    ("spec.resources", "runAsUser", 0),
    ("spec.storage.volume", "hostPath", {"path": "/"}),
    ("spec.storage", "hostPath", {"path": "/"}),
    ("spec.env.0", "valueFrom", {"fieldRef": {"fieldPath": "spec.nodeName"}}),
    ("spec.generation", "command", ["sh", "-c", "id"]),
]


@pytest.mark.parametrize("where, key, value", INJECTIONS, ids=[f"{w}.{k}" for w, k, _ in INJECTIONS])
def test_host_and_privilege_fields_are_unknown(kube, crds, namespace, where, key, value):  # noqa: F811
    doc = run_doc("inject")
    if where == "spec.storage.volume":
        doc["spec"]["storage"] = {"volume": {"claimName": "ws"}}
    node = doc
    for part in where.split("."):
        node = node[int(part)] if part.isdigit() else node[part]
    node[key] = value
    with pytest.raises(ApiError) as err:
        kube.post(RUNS.format(ns=namespace), doc, fieldValidation="Strict", dryRun="All")
    assert err.value.status in (400, 422), err.value
    assert f'unknown field "{where}.{key}"' in str(err.value) or key in str(err.value), err.value


# ---- least privilege, sufficient -------------------------------------------------------------------------

_LOG_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", re.MULTILINE)


def _forbidden_in_logs(logs: str) -> bool:
    """A 403 anywhere in the operator's messages; the timestamps' milliseconds (",403") are not messages."""
    messages = _LOG_TIMESTAMP.sub("", logs)
    return "Forbidden" in messages or re.search(r"\b403\b", messages) is not None


def test_operator_with_only_the_charts_rbac(installed_rbac, kube, dev_cluster, crds, namespace,  # noqa: F811
                                            tmp_path):
    """The chart's namespaced RBAC (watching the test namespace) runs a run with secret references to
    success — the operator never needs to read a Secret — and some actions test_helm_install.py does not
    try stay forbidden."""
    release, sa = installed_rbac({"rbac": {"scope": "namespaced"}, "watchNamespaces": [namespace]})
    _wait_allowed(sa, "create", "jobs", namespace, "batch")
    value = _plant_secrets(kube, namespace)
    # the chart's Role reads and renews only its own Lease, named as the chart's Deployment names it
    op = Operator(kube_config(kube, tmp_path, token=sa.token), namespace, tmp_path,
                  extra_args=("--lease-name", f"{release}-synpo-operator"))
    op.start()
    try:
        kube.post(RUNS.format(ns=namespace), _secret_run("least"))
        done = wait_run(kube, namespace, "least", lambda s: s.get("phase") in ("Succeeded", "Failed"), timeout=180)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert not _forbidden_in_logs(op.logs()), op.logs()[-3000:]
    finally:
        op.stop()
        _release(kube, namespace)
    assert value not in op.logs()

    ns = namespace
    _forbidden(sa.get, f"/api/v1/namespaces/{ns}/secrets/hf")
    _forbidden(sa.get, f"/api/v1/namespaces/{ns}/secrets", watch="true")
    _forbidden(sa.post, f"/api/v1/namespaces/{ns}/serviceaccounts/default/token",
               {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}})
    pod = kube.get(PODS.format(ns=ns))["items"][0]["metadata"]["name"]
    _forbidden(sa.get, f"/api/v1/namespaces/{ns}/pods/{pod}/log")
    _forbidden(sa.post, f"/api/v1/namespaces/{ns}/pods/{pod}/attach", None, stdout="true")
    _forbidden(sa.post, f"/api/v1/namespaces/{ns}/pods/{pod}/portforward", None)
    _forbidden(sa.get, f"/api/v1/nodes/{dev_cluster.node_name}/proxy/metrics")
    assert not sa.can_i("impersonate", "users")
    assert not sa.can_i("impersonate", "serviceaccounts", ns)
    assert not sa.can_i("create", "serviceaccounts/token", ns)
    assert not sa.can_i("escalate", "roles", ns, group="rbac.authorization.k8s.io")
    assert not sa.can_i("bind", "clusterroles", group="rbac.authorization.k8s.io")
    assert not sa.can_i("create", "rolebindings", ns, group="rbac.authorization.k8s.io")
    assert not sa.can_i("update", "configmaps", "kube-system")
    assert not sa.can_i("create", "pods/eviction", ns)
    assert not sa.can_i("delete", "pods", ns)
    assert not sa.can_i("create", "persistentvolumes")
