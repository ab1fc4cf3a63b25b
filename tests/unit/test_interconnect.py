"""The interconnect of training pods (resources.training extraResources, podAnnotations, podLabels, ipcLock;
resources.sharedMemory): rendered into training pods only, bad values refused naming the field."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from synpo_operator.api.crd import crds
from synpo_operator.api.loader import SpecError, parse_resource
from synpo_operator.executors.manifests import render_job, render_stage
from synpo_operator.plan import stage_graph
from synpo_operator.plan.resources import stage_kind

from .conftest import ROOT

EXAMPLE_70B = yaml.safe_load((ROOT / "examples" / "cluster-llama3-70b.yaml").read_text())
EXAMPLE = yaml.safe_load((ROOT / "examples" / "cluster-llama3.yaml").read_text())


def with_training(doc, **training):
    doc = copy.deepcopy(doc)
    doc["spec"]["resources"]["training"] = {**doc["spec"]["resources"].get("training", {}), **training}
    return doc


def pod_template(manifest):
    if manifest["kind"] == "JobSet":
        return manifest["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    return manifest["spec"]["template"]


def test_training_pods_of_the_70b_example_get_the_interconnect():
    run = parse_resource(EXAMPLE_70B)
    seen = set()
    for node in stage_graph(run.spec):
        manifest = render_stage(run, node)
        template = pod_template(manifest)
        c = template["spec"]["containers"][0]
        kind = stage_kind(node)
        seen.add(kind)
        shm = {v["name"]: v for v in template["spec"]["volumes"]}.get("dshm")
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["NCCL_IB_HCA"] == "mlx5"  # spec.env reaches every stage container
        if kind == "training":
            assert manifest["kind"] == "JobSet"
            assert c["resources"]["limits"]["rdma/ib"] == "1"
            assert template["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "ib-sriov"
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
            assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}  # 2Gi x 8 GPUs
        else:
            assert "rdma/ib" not in c["resources"].get("limits", {})
            assert "k8s.v1.cni.cncf.io/networks" not in template["metadata"]["annotations"]
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
            if kind == "cpu":
                assert shm is None
            else:  # generation: 8 GPUs; scoring: 1
                assert shm["emptyDir"]["sizeLimit"] == ("16Gi" if kind == "generation" else "2Gi")
    assert seen == {"training", "generation", "scoring", "cpu"}


def test_pod_labels_and_shared_memory():
    doc = with_training(EXAMPLE, podLabels={"team": "alignment", "network.example.com/fabric": "ib"})
    doc["spec"]["resources"]["sharedMemory"] = "32Gi"
    run = parse_resource(doc)
    node = next(n for n in stage_graph(run.spec) if n.key == "i1-train")
    job = render_job(run, node)
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "alignment" and labels["synpo.dev/stage"] == "train"
    assert "team" not in job["metadata"]["labels"]  # pods only: the Job's labels are the operator's
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"]["sizeLimit"] == "32Gi"
    # unset: 2Gi per GPU, at most half the pod's memory
    small = copy.deepcopy(EXAMPLE)
    small["spec"]["resources"].update(memory="8Gi")
    run = parse_resource(small)
    volumes = {v["name"]: v for v in render_job(run, node)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"]["sizeLimit"] == "4Gi"
    # off by default: no extra resources, annotations, labels or capability
    plain = parse_resource(EXAMPLE)
    c = render_job(plain, node)["spec"]["template"]["spec"]["containers"][0]
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert set(c["resources"]["limits"]) == {"cpu", "memory", "nvidia.com/gpu"}


def test_aws_efa_shape():
    run = parse_resource(with_training(EXAMPLE_70B, extraResources={"vpc.amazonaws.com/efa": 32}, podAnnotations={},
                                       ipcLock=False))
    node = next(n for n in stage_graph(run.spec) if n.key == "i1-train")
    c = pod_template(render_stage(run, node))["spec"]["containers"][0]
    assert c["resources"]["limits"]["vpc.amazonaws.com/efa"] == "32"
    assert "add" not in c["securityContext"]["capabilities"]


@pytest.mark.parametrize("training, field", [
    ({"extraResources": {"cpu": 1}}, "spec.resources.training.extraResources: key 'cpu' must be an extended resource"),
    ({"extraResources": {"rdma/ib": 0}}, "spec.resources.training.extraResources.'rdma/ib': Input should be greater"),
    ({"extraResources": {"rdma/ib": "1"}}, "spec.resources.training.extraResources.'rdma/ib': Input should be a valid integer"),
    ({"extraResources": {"kubernetes.io/batch": 1}}, "spec.resources.training.extraResources: key 'kubernetes.io/batch' is a Kubernetes-reserved"),
    ({"extraResources": {"requests.rdma/ib": 1}}, "key 'requests.rdma/ib' is a Kubernetes-reserved"),
    ({"extraResources": {"nvidia.com/gpu": 8}}, "spec.resources: training.extraResources: nvidia.com/gpu is the GPU resource"),
    ({"podAnnotations": {"synpo.dev/stage-config": "{}"}}, "spec.resources.training.podAnnotations: key 'synpo.dev/stage-config' is under a reserved prefix"),
    ({"podAnnotations": {"container.apparmor.security.beta.kubernetes.io/stage": "unconfined"}}, "spec.resources.training.podAnnotations: key 'container.apparmor.security.beta.kubernetes.io/stage' is under a reserved prefix"),
    ({"podAnnotations": {"bad key!": "x"}}, "spec.resources.training.podAnnotations: key 'bad key!' must be a Kubernetes label key"),
    ({"podLabels": {"kueue.x-k8s.io/queue-name": "other"}}, "spec.resources.training.podLabels: key 'kueue.x-k8s.io/queue-name' is under a reserved prefix"),
    ({"podLabels": {"team": "a b"}}, "spec.resources.training.podLabels.team: must be a Kubernetes label value"),
    ({"ipcLock": "yes"}, "spec.resources.training.ipcLock"),
])
def test_bad_interconnect_values_name_the_field(training, field):
    with pytest.raises(SpecError) as err:
        parse_resource(with_training(EXAMPLE, **training), "run.yaml")
    assert any(p.startswith(field) or field in p for p in err.value.problems), err.value.problems


def test_the_crd_checks_the_same_keys_at_apply_time():
    """The CEL rules' regexes are the models' (RE2 and Python agree on these patterns)."""
    crd = next(c for c in crds() if c["spec"]["names"]["kind"] == "SynPORun")
    resources = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["resources"]
    training = resources["properties"]["training"]["properties"]
    assert any("gpuResourceName" in r["rule"] for r in resources["x-kubernetes-validations"])
    assert training["extraResources"]["additionalProperties"] == {"type": "integer", "minimum": 1, "maximum": 1024}
    for field, bad, good in (("podAnnotations", "synpo.dev/x", "k8s.v1.cni.cncf.io/networks"),
                             ("podLabels", "a.kubernetes.io/x", "team"),
                             ("extraResources", "kubernetes.io/x", "vpc.amazonaws.com/efa")):
        rules = [r["rule"] for r in training[field]["x-kubernetes-validations"]]
        patterns = [re.search(r"matches\('(.*?)'\)", r).group(1).replace("\\\\", "\\") for r in rules]
        # the rule holds for the key when every `matches` of an `!k.matches` is false and every other one is true
        def holds(key, rules=rules, patterns=patterns):
            return all((re.search(p, key) is None) == ("!k.matches" in r) for r, p in zip(rules, patterns, strict=True))
        assert holds(good) and not holds(bad), field
