"""A rehearsal on a cluster shaped like the real one (issue 23, item 6).

The dev cluster gets 4 GPU nodes (8 nvidia.com/gpu, 2 TiB of memory, the RDMA device plugin's rdma/ib, the
H100 product label the examples select, the GPU operator's nvidia.com/gpu taint) and 2 CPU nodes, all kwok
fakes; JobSet and Kueue run for real. A cluster example, as shipped except for fewer prompts, pairs and
iterations, is applied with kubectl into a namespace with what it refers to (its LocalQueue, PriorityClass,
ServiceAccount, Secrets, PersistentVolumeClaims) and must reach Succeeded. Then, from where the real scheduler put every pod:
CPU stages ran on CPU nodes, GPU stages on GPU nodes, every training JobSet's pods on distinct GPU nodes that
have the RDMA resource, no pod asked for more of a resource than its node has, and each GPU stage's
gpuSeconds in the run's status is what its pods' GPUs and run times add up to. The placement table is printed.

The shaped nodes are harmless to the tests sharing the cluster: each carries this rehearsal's own taint, and
only the rehearsal's Kueue ResourceFlavor adds the toleration (and a nodeSelector for these nodes) to the pods
it admits, as a real cluster steers a team's queue onto its nodes. They are deleted at the end.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections import defaultdict
from collections.abc import Iterator
from fractions import Fraction

import pytest
import yaml

from synpo_devcluster.client import ApiError, KubeClient
from synpo_devcluster.nodes import NodeShape, add_nodes, remove_nodes

from .test_helm_install import chart
from .test_jobset import jobset  # noqa: F401 - fixture
from .test_kueue import KUEUE, kueue  # noqa: F401 - fixture
from .test_operator import PODS, RESULTS, ROOT, crds, operator, wait_run  # noqa: F401 - fixtures

GPU = "nvidia.com/gpu"
RDMA = "rdma/ib"
H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.present": "true"}
GPU_TAINT = {"key": GPU, "value": "present", "effect": "NoSchedule"}
KIND = "synpo.dev/rehearsal-node-kind"
REHEARSAL = "synpo.dev/rehearsal"  # label and taint: this rehearsal's nodes only
GPU_NODE = {"cpu": "192", "memory": "2Ti", GPU: "8", RDMA: "64", "ephemeral-storage": "28Ti"}
CPU_NODE = {"cpu": "32", "memory": "128Gi", "ephemeral-storage": "500Gi"}
# per iteration, instead of the examples' 50000 and 10000; 2 iterations instead of 4 (iteration 2 has every stage
# kind a later one has) keep the two runs within ~3 minutes on a busy 2-core machine
PROMPTS, PAIRS, ITERATIONS = 200, 40, 2


# ---- quantities ---------------------------------------------------------------------------------
_SUFFIX = {"": 1, "m": Fraction(1, 1000), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}


def quantity(text: str) -> Fraction:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi)?", str(text))
    assert match, f"not a quantity: {text!r}"
    return Fraction(match.group(1)) * _SUFFIX[match.group(2) or ""]


def pod_requests(pod: dict) -> dict[str, Fraction]:
    """What the scheduler counts: the sum over the containers, or an init container's when larger (summed as
    quantities; extended resources are requested through limits, which default the requests)."""
    total: dict[str, Fraction] = defaultdict(Fraction)
    for c in pod["spec"]["containers"]:
        res = c.get("resources") or {}
        for name, value in {**(res.get("limits") or {}), **(res.get("requests") or {})}.items():
            total[name] += quantity(value)
    for c in pod["spec"].get("initContainers") or []:
        res = c.get("resources") or {}
        for name, value in {**(res.get("limits") or {}), **(res.get("requests") or {})}.items():
            total[name] = max(total[name], quantity(value))
    return {name: v for name, v in total.items() if v}


def _show(name: str, value: Fraction) -> str:
    if name in ("memory", "ephemeral-storage") or name.endswith("storage"):
        return f"{float(value / 2**30):g}Gi"
    return f"{float(value):g}"


# ---- the rehearsal cluster ----------------------------------------------------------------------
@pytest.fixture
def shaped_nodes(kube: KubeClient) -> Iterator[dict[str, str]]:
    """4 GPU nodes and 2 CPU nodes, each tainted for this rehearsal only; name -> kind ("gpu" or "cpu")."""
    token = uuid.uuid4().hex[:6]
    own = {"key": REHEARSAL, "value": token, "effect": "NoSchedule"}
    gpu = NodeShape(GPU_NODE, labels={**H100, KIND: "gpu", REHEARSAL: token}, taints=(GPU_TAINT, own))
    cpu = NodeShape(CPU_NODE, labels={KIND: "cpu", REHEARSAL: token}, taints=(own,))
    nodes = {**{f"rh-{token}-gpu-{i}": gpu for i in range(4)}, **{f"rh-{token}-cpu-{i}": cpu for i in range(2)}}
    try:
        add_nodes(kube, nodes)
        yield {name: shape.labels[KIND] for name, shape in nodes.items()} | {"": token}
    finally:
        remove_nodes(kube, nodes)


def _post_cluster_object(kube: KubeClient, path: str, obj: dict, created: list[str]) -> None:
    try:
        kube.post(path, obj)
        created.append(f"{path}/{obj['metadata']['name']}")
    except ApiError as e:
        if e.status != 409:  # another session's (e.g. the PriorityClass): theirs to delete
            raise


@pytest.fixture
def team_queue(kube: KubeClient, kueue, shaped_nodes, namespace) -> Iterator[str]:  # noqa: F811
    """A ResourceFlavor for the rehearsal's nodes (their label as nodeSelector, their taint tolerated) and a
    ClusterQueue, for this namespace only, with exactly the nodes' capacity as quota; returns the flavor."""
    token = shaped_nodes[""]
    nodes = [n for n in shaped_nodes if n]
    totals: dict[str, Fraction] = defaultdict(Fraction)
    for name in nodes:
        for res, value in (GPU_NODE if shaped_nodes[name] == "gpu" else CPU_NODE).items():
            totals[res] += quantity(value)
    names = {"flavor": f"rehearsal-{token}", "cq": f"rehearsal-{token}"}
    created: list[str] = []
    try:
        _post_cluster_object(kube, f"{KUEUE}/resourceflavors", {
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": names["flavor"]},
            "spec": {"nodeLabels": {REHEARSAL: token},
                     "tolerations": [{"key": REHEARSAL, "operator": "Equal", "value": token,
                                      "effect": "NoSchedule"}]}}, created)
        _post_cluster_object(kube, f"{KUEUE}/clusterqueues", {
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": names["cq"]},
            "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                     "resourceGroups": [{"coveredResources": sorted(totals), "flavors": [{
                         "name": names["flavor"], "resources": [
                             {"name": r, "nominalQuota": str(int(v))} for r, v in sorted(totals.items())]}]}]}},
            created)
        kube.wait_for(f"{KUEUE}/clusterqueues/{names['cq']}", lambda o: any(
            c["type"] == "Active" and c["status"] == "True" for c in (o.get("status") or {}).get("conditions") or []),
            timeout=30)
        yield names["cq"]
    finally:
        for path in reversed(created):
            kube.delete_if_exists(path)


def _secret_refs(node) -> Iterator[tuple[str, str]]:
    """(Secret, key) pairs a run refers to (env secretKeyRef, a judge's apiKeySecretRef), anywhere in it."""
    if isinstance(node, dict):
        if set(node) == {"name", "key"}:
            yield node["name"], node["key"]
        for value in node.values():
            yield from _secret_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _secret_refs(value)


def prepare_namespace(kube: KubeClient, namespace: str, cq: str, spec: dict, created: list[str]) -> None:
    """What the example expects to exist: its LocalQueue, PriorityClass, ServiceAccount, Secrets and bound
    PersistentVolumeClaims (statically provisioned volumes; kwok mounts nothing)."""
    kube.post(f"{KUEUE}/namespaces/{namespace}/localqueues", {
        "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
        "metadata": {"name": spec["queueName"], "namespace": namespace}, "spec": {"clusterQueue": cq}})
    res = spec["resources"]
    if res.get("priorityClassName"):
        _post_cluster_object(kube, "/apis/scheduling.k8s.io/v1/priorityclasses", {
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": res["priorityClassName"]}, "value": 1000}, created)
    if res.get("serviceAccountName"):
        kube.post(f"/api/v1/namespaces/{namespace}/serviceaccounts", {
            "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": res["serviceAccountName"]}})
    secrets: dict[str, dict[str, str]] = defaultdict(dict)
    for name, key in _secret_refs(spec):
        secrets[name][key] = "cmVoZWFyc2Fs"
    for name, data in secrets.items():
        kube.post(f"/api/v1/namespaces/{namespace}/secrets",
                  {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": data})
    claims = [v for v in (spec["storage"].get("volume"), spec["storage"].get("modelCache")) if v]
    for claim in claims:
        size = claim.get("size") or "1Ti"
        pv = f"{namespace}-{claim['claimName']}"[:63]
        _post_cluster_object(kube, "/api/v1/persistentvolumes", {
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                     "persistentVolumeReclaimPolicy": "Retain",
                     "nfs": {"server": "nfs.rehearsal.invalid", "path": f"/{claim['claimName']}"},
                     "claimRef": {"namespace": namespace, "name": claim["claimName"]}}}, created)
        kube.post(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim["claimName"]},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                     "resources": {"requests": {"storage": size}}}})
    for claim in claims:
        kube.wait_for(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim['claimName']}",
                      lambda o: (o.get("status") or {}).get("phase") == "Bound", timeout=60)


def example_run(example: str, namespace: str) -> dict:
    """The example as shipped, in the test's namespace, with fewer prompts, pairs and iterations; its stage pods (kwok
    fakes) run 1 s each and report the summaries the operator reads."""
    doc = yaml.safe_load((ROOT / "examples" / example).read_text())
    doc["metadata"]["namespace"] = namespace
    doc["spec"]["promptsPerIteration"] = PROMPTS
    doc["spec"]["pairsPerIteration"] = PAIRS
    doc["spec"]["iterations"] = ITERATIONS
    fakes: dict[str, dict[str, str]] = {"*": {"synpo.dev/fake-duration": "1s"}}
    for stage, result in RESULTS.items():
        fakes[stage] = {"synpo.dev/fake-termination-message": json.dumps(result)}
    doc["metadata"].setdefault("annotations", {})["synpo.dev/test-pod-annotations"] = json.dumps(fakes)
    return doc


def kubectl_apply(kubeconfig: str, doc: dict) -> None:
    """`kubectl apply -f`, as a user applies the example."""
    proc = subprocess.run([chart.tool("kubectl"), "apply", "-f", "-"], input=yaml.safe_dump(doc, sort_keys=False),
                          capture_output=True, text=True, env={**os.environ, "KUBECONFIG": kubeconfig}, timeout=60)
    assert proc.returncode == 0, f"kubectl apply failed: {proc.stdout}{proc.stderr}"


# ---- placements ---------------------------------------------------------------------------------
def placement_rows(kube: KubeClient, namespace: str, kinds: dict[str, str]) -> list[dict]:
    rows = []
    for pod in kube.get(PODS.format(ns=namespace))["items"]:
        labels = pod["metadata"].get("labels") or {}
        node = pod["spec"].get("nodeName") or ""
        rows.append({"stage": labels.get("synpo.dev/stage-key", "?"), "pod": pod["metadata"]["name"], "node": node,
                     "kind": kinds.get(node, "other"), "requests": pod_requests(pod),
                     "jobset": labels.get("jobset.sigs.k8s.io/jobset-name"), "pod_obj": pod})
    return sorted(rows, key=lambda r: (r["stage"], r["pod"]))


def format_table(rows: list[dict]) -> str:
    def req(r: dict) -> str:
        return " ".join(f"{k}={_show(k, v)}" for k, v in sorted(r["requests"].items()))

    cols = ("stage", "pod", "node", "kind")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols) + "  requests"]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) + "  " + req(r) for r in rows]
    return "\n".join(lines)


def _seconds(pod: dict) -> float:
    from synpo_operator.clock import parse_time

    for cs in pod["status"].get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return (parse_time(term["finishedAt"]) - parse_time(term["startedAt"])).total_seconds()
    return 0.0


@pytest.mark.parametrize("example", ["cluster-llama3-70b.yaml", "cluster-llama3.yaml"])
def test_example_rehearsed_on_a_cluster_shaped_like_the_real_one(
        kube, dev_cluster, jobset, operator, team_queue, shaped_nodes, namespace, example):  # noqa: F811
    doc = example_run(example, namespace)
    created: list[str] = []
    try:
        prepare_namespace(kube, namespace, team_queue, doc["spec"], created)
        kubectl_apply(dev_cluster.kubeconfig, doc)
        name = doc["metadata"]["name"]
        done = wait_run(kube, namespace, name, lambda s: s.get("phase") in ("Succeeded", "Failed"), timeout=300)
        rows = placement_rows(kube, namespace, shaped_nodes)
        print(f"\nplacements of {example} ({len(rows)} pods):\n{format_table(rows)}")
        assert done["status"]["phase"] == "Succeeded", done["status"]
        check_placements(kube, rows, doc, done["status"])
    finally:
        for path in reversed(created):
            kube.delete_if_exists(path)


def check_placements(kube: KubeClient, rows: list[dict], doc: dict, status: dict) -> None:
    nodes = {r["node"]: kube.get(f"/api/v1/nodes/{r['node']}") for r in rows}
    stages = {s["name"]: s for s in status["stages"]}
    assert {r["stage"] for r in rows} == set(stages)  # every stage ran here, as pods the scheduler placed
    for r in rows:
        allocatable = nodes[r["node"]]["status"]["allocatable"]
        assert r["kind"] in ("gpu", "cpu"), r  # only the rehearsal's nodes (the flavor's nodeSelector)
        for res, value in r["requests"].items():  # no pod asks for more than its node has
            assert value <= quantity(allocatable.get(res, "0")), (r["pod"], res, value, allocatable)
        gpus = r["requests"].get(GPU)
        assert r["kind"] == ("gpu" if gpus else "cpu"), r  # CPU stages off the GPU nodes, GPU stages on them
    cpu_stages = {r["stage"] for r in rows if not r["requests"].get(GPU)}
    assert "i0-keywords" in cpu_stages, cpu_stages

    # every training JobSet: one pod per distinct GPU node, each with the RDMA resource
    training_nodes = doc["spec"]["resources"]["training"].get("nodes", 1)
    by_jobset: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["jobset"]:
            by_jobset[r["jobset"]].append(r)
    train_stages = {s for s in stages if s.endswith(("-prompt-generator", "-improver", "-train"))}
    if training_nodes > 1:
        assert {rs[0]["stage"] for rs in by_jobset.values()} == train_stages
        for js, rs in by_jobset.items():
            assert len(rs) == training_nodes and len({r["node"] for r in rs}) == training_nodes, (js, rs)
            for r in rs:
                assert quantity(nodes[r["node"]]["status"]["allocatable"].get(RDMA, "0")) > 0, r
                extra = doc["spec"]["resources"]["training"].get("extraResources") or {}
                assert all(r["requests"].get(k) == quantity(v) for k, v in extra.items()), (r, extra)
    else:
        assert not by_jobset
    for r in rows:
        if r["stage"] in train_stages:
            assert RDMA in nodes[r["node"]]["status"]["allocatable"], r

    # GPU-seconds in the status: each GPU stage's pods' GPUs x their run time
    expected: dict[str, float] = defaultdict(float)
    for r in rows:
        expected[r["stage"]] += int(r["requests"].get(GPU, "0")) * _seconds(r["pod_obj"])
    for key, stage in stages.items():
        got = (stage.get("result") or {}).get("gpuSeconds")
        if key in cpu_stages:
            assert not got, (key, stage)
        else:
            assert got and got == pytest.approx(expected[key], abs=1e-3), (key, got, expected[key])
