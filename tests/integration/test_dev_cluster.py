"""The dev cluster is a real control plane: Jobs, scheduling onto the fake GPU node, kwok pod stages, RBAC."""

from __future__ import annotations

import time

import pytest

from synpo_devcluster import K8S_VERSION
from synpo_devcluster.client import ApiError, KubeClient
from synpo_devcluster.kwok_stages import FAKE_EXIT_CODE, FAKE_HOLD, FAKE_TERMINATION_MESSAGE

pytestmark = pytest.mark.integration


def _job(
    name: str,
    *,
    completions: int = 1,
    indexed: bool = False,
    annotations: dict | None = None,
    gpus: int = 1,
    **spec,
) -> dict:
    job_spec = {
        "completions": completions,
        "parallelism": completions,
        "backoffLimit": 0,
        "template": {
            "metadata": {"annotations": annotations or {}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "main",
                        "image": "synpo/worker:dev",
                        "resources": {"limits": {"nvidia.com/gpu": str(gpus)}, "requests": {"cpu": "1"}},
                    }
                ],
            },
        },
    }
    if indexed:
        job_spec["completionMode"] = "Indexed"
    job_spec.update(spec)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": job_spec}


def _condition(obj: dict, ctype: str) -> dict | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == ctype), None)


def _job_finished(job: dict) -> bool:
    return any((_condition(job, t) or {}).get("status") == "True" for t in ("Complete", "Failed"))


def _pods(kube: KubeClient, ns: str, job: str) -> list[dict]:
    return kube.get(f"/api/v1/namespaces/{ns}/pods", labelSelector=f"batch.kubernetes.io/job-name={job}")[
        "items"
    ]


def test_apiserver_reports_pinned_version(kube: KubeClient, dev_cluster):
    v = kube.version()
    assert v["gitVersion"] == K8S_VERSION
    assert (v["major"], v["minor"]) == tuple(K8S_VERSION.lstrip("v").split(".")[:2])
    assert kube.get_text("/readyz") == "ok"
    node = kube.get(f"/api/v1/nodes/{dev_cluster.node_name}")
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "H100"
    assert _condition(node, "Ready")["status"] == "True"


def test_indexed_job_completes_on_fake_gpu_node(kube: KubeClient, namespace: str, dev_cluster):
    kube.post(f"/apis/batch/v1/namespaces/{namespace}/jobs", _job("indexed", completions=2, indexed=True))
    job = kube.wait_for(f"/apis/batch/v1/namespaces/{namespace}/jobs/indexed", _job_finished, timeout=60)
    assert _condition(job, "Complete")["status"] == "True", job["status"]
    assert job["status"]["succeeded"] == 2
    assert job["status"]["completedIndexes"] == "0,1"
    pods = _pods(kube, namespace, "indexed")
    assert len(pods) == 2
    assert sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods) == [
        "0",
        "1",
    ]
    for p in pods:
        assert p["spec"]["nodeName"] == dev_cluster.node_name
        assert p["status"]["phase"] == "Succeeded"
        term = p["status"]["containerStatuses"][0]["state"]["terminated"]
        assert term["exitCode"] == 0 and term["reason"] == "Completed"


def test_fake_exit_code_fails_job(kube: KubeClient, namespace: str):
    job = _job(
        "fails",
        annotations={FAKE_EXIT_CODE: "3"},
        backoffLimit=2,
        podFailurePolicy={"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [3]}}]},
    )
    kube.post(f"/apis/batch/v1/namespaces/{namespace}/jobs", job)
    job = kube.wait_for(f"/apis/batch/v1/namespaces/{namespace}/jobs/fails", _job_finished, timeout=60)
    failed = _condition(job, "Failed")
    assert failed and failed["status"] == "True", job["status"]
    assert failed["reason"] == "PodFailurePolicy"
    pods = _pods(kube, namespace, "fails")
    assert len(pods) == 1  # FailJob: no retries despite backoffLimit=2
    assert pods[0]["status"]["phase"] == "Failed"
    term = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3 and term["reason"] == "Error"


def test_termination_message_annotation(kube: KubeClient, namespace: str):
    msg = '{"stage": "generate", "pairs": 128}'
    kube.post(
        f"/apis/batch/v1/namespaces/{namespace}/jobs",
        _job("msg", annotations={FAKE_TERMINATION_MESSAGE: msg}),
    )
    kube.wait_for(f"/apis/batch/v1/namespaces/{namespace}/jobs/msg", _job_finished, timeout=60)
    (pod,) = _pods(kube, namespace, "msg")
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == msg


def test_hold_keeps_pod_running_until_released_or_deleted(kube: KubeClient, namespace: str):
    base = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    kube.post(base, _job("held", completions=2, annotations={FAKE_HOLD: "true"}))
    kube.wait_for(f"{base}/held", lambda j: j.get("status", {}).get("ready") == 2, timeout=60)
    time.sleep(2.5)
    pods = _pods(kube, namespace, "held")
    assert [p["status"]["phase"] for p in pods] == ["Running", "Running"]
    # release one pod: it then finishes like any other
    released, killed = (p["metadata"]["name"] for p in pods)
    pods_path = f"/api/v1/namespaces/{namespace}/pods"
    kube.patch(f"{pods_path}/{released}", {"metadata": {"annotations": {FAKE_HOLD: None}}})
    kube.wait_for(f"{pods_path}/{released}", lambda p: p["status"]["phase"] == "Succeeded", timeout=30)
    # delete the other mid-run: it ends (Failed, like a killed process), the Job controller drops its
    # tracking finalizer, and the pod disappears
    kube.delete(f"{pods_path}/{killed}")
    kube.wait_gone(f"{pods_path}/{killed}", timeout=30)
    kube.delete(f"{base}/held", propagationPolicy="Foreground")
    kube.wait_gone(f"{base}/held", timeout=60)
    assert _pods(kube, namespace, "held") == []


def test_suspend_and_managed_by(kube: KubeClient, namespace: str):
    base = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    kube.post(base, _job("suspended", suspend=True))
    kube.post(base, _job("external", managedBy="synpo.dev/test-controller"))
    time.sleep(2)
    assert _pods(kube, namespace, "suspended") == []
    assert _pods(kube, namespace, "external") == []  # the built-in Job controller leaves it alone
    kube.patch(f"{base}/suspended", {"spec": {"suspend": False}})
    job = kube.wait_for(f"{base}/suspended", _job_finished, timeout=60)
    assert _condition(job, "Complete")["status"] == "True"


def test_service_account_token_rbac(kube: KubeClient, namespace: str):
    ns = namespace
    kube.post(f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "reader"}})
    kube.post(
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
        {
            "metadata": {"name": "pod-getter"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
        },
    )
    kube.post(
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
        {
            "metadata": {"name": "reader-gets-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-getter"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
        },
    )
    kube.post(
        f"/api/v1/namespaces/{ns}/pods",
        {
            "metadata": {"name": "target", "annotations": {FAKE_HOLD: "true"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]},
        },
    )
    token = kube.request_token(ns, "reader", expiration_seconds=600)
    sa = kube.with_token(token)
    review = sa.post(
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    assert review["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:reader"
    assert sa.get(f"/api/v1/namespaces/{ns}/pods/target")["metadata"]["name"] == "target"
    assert sa.can_i("get", "pods", ns) and not sa.can_i("list", "pods", ns)
    with pytest.raises(ApiError) as e:
        sa.get(f"/api/v1/namespaces/{ns}/pods")
    assert e.value.status == 403
    with pytest.raises(ApiError) as e:
        sa.post(f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": "nope"}})
    assert e.value.status == 403
    with pytest.raises(ApiError) as e:
        KubeClient(kube.server, token="not-a-token", ca_file=kube.ca_file).get(
            f"/api/v1/namespaces/{ns}/pods"
        )
    assert e.value.status == 401
