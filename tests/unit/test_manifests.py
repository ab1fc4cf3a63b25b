"""Pure rendering of stage Jobs, which carry their stage config (executors/manifests.py)."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synpo_operator.api.loader import SpecError, parse_resource
from synpo_operator.executors.jobs import jobs_spec_problems
from synpo_operator.executors.manifests import (
    ANNOTATION_STAGE_CONFIG,
    LABEL_PRIORITY_CLASS,
    LABEL_QUEUE,
    MAX_STAGE_CONFIG_BYTES,
    TEST_POD_ANNOTATIONS,
    StageConfigTooLarge,
    gpus_for,
    job_name,
    render_job,
    render_run_manifests,
    render_stage,
    stage_config_problems,
)
from synpo_operator.plan import artifacts_uri, stage_config, stage_graph
from synpo_operator.plan.planner import Start
from synpo_operator.plan.resources import pod_shape

from .conftest import ROOT

CLUSTER = yaml.safe_load((ROOT / "examples" / "cluster-llama3.yaml").read_text())


def run_of(doc=None, **spec):
    doc = copy.deepcopy(doc or CLUSTER)
    doc["spec"].update(spec)
    return parse_resource(doc)


def node_of(run, key):
    return next(n for n in stage_graph(run.spec) if n.key == key)


def walk(obj):
    """Every (key, value) pair in a nested manifest."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k, v
            yield from walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from walk(v)


def container(job):
    return job["spec"]["template"]["spec"]["containers"][0]


def embedded_config(job):
    """The stage config the Job carries (its pod-template annotation), parsed."""
    return json.loads(job["spec"]["template"]["metadata"]["annotations"][ANNOTATION_STAGE_CONFIG])


def test_job_name_is_deterministic_and_fits():
    run = run_of()
    a = render_job(run, node_of(run, "i1-train"), uid="u1")
    b = render_job(run, node_of(run, "i1-train"), uid="u1")
    assert a == b
    assert a["metadata"]["name"] == "llama3-synpo-i1-train" == job_name("llama3-synpo", "i1-train")
    assert job_name("r", "i1-train", attempt=2) == "r-i1-train-a2"


def test_longest_names_fit_dns_labels():
    """A 40-character run, 20 iterations, 256 shards: Job names and Indexed pod hostnames stay ≤ 63."""
    doc = copy.deepcopy(CLUSTER)
    doc["metadata"]["name"] = "r" * 40
    doc["spec"]["iterations"] = 20
    doc["spec"]["generation"]["shards"] = 256
    run = parse_resource(doc)
    for node in stage_graph(run.spec):
        name = render_job(run, node)["metadata"]["name"]
        assert len(name) <= 63, name
        if node.shards > 1:
            assert len(f"{name}-{node.shards - 1}") <= 63, name


def test_owner_reference_labels_and_queue():
    run = run_of()
    job = render_job(run, node_of(run, "i2-refine"), uid="1234")
    owner = job["metadata"]["ownerReferences"][0]
    assert owner == {"apiVersion": "synpo.dev/v1alpha1", "kind": "SynPORun", "name": "llama3-synpo",
                     "uid": "1234", "controller": True, "blockOwnerDeletion": True}
    labels = job["metadata"]["labels"]
    assert labels["synpo.dev/run"] == "llama3-synpo"
    assert labels["synpo.dev/iteration"] == "2"
    assert labels["synpo.dev/stage"] == "refine"
    assert labels["app.kubernetes.io/managed-by"] == "synpo-operator"
    assert labels[LABEL_QUEUE] == "team-alignment"
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["synpo.dev/run"] == "llama3-synpo" and LABEL_QUEUE not in pod_labels
    # Kueue: created suspended, only because a queue is named
    assert job["spec"]["suspend"] is True
    no_queue = render_job(run_of(queueName=None), node_of(run, "i2-refine"))
    assert "suspend" not in no_queue["spec"] and LABEL_QUEUE not in no_queue["metadata"]["labels"]
    assert LABEL_PRIORITY_CLASS not in labels  # no workload priority unless the spec names one


def test_sharded_stage_is_partially_admissible_by_kueue():
    """8 shards x 8 GPUs would never be admitted whole by a queue of 4 GPU nodes: Kueue may admit fewer."""
    run = run_of()
    refine = render_job(run, node_of(run, "i2-refine"))
    assert refine["spec"]["parallelism"] == 8
    assert refine["metadata"]["annotations"]["kueue.x-k8s.io/job-min-parallelism"] == "1"
    one_pod = render_job(run, node_of(run, "i2-pairs"))
    assert "kueue.x-k8s.io/job-min-parallelism" not in one_pod["metadata"]["annotations"]
    no_queue = render_job(run_of(queueName=None), node_of(run, "i2-refine"))
    assert "kueue.x-k8s.io/job-min-parallelism" not in no_queue["metadata"]["annotations"]


def test_workload_priority_class_label():
    run = run_of(workloadPriorityClassName="team-a.high")
    for node in stage_graph(run.spec):
        job = render_job(run, node)
        assert job["metadata"]["labels"][LABEL_PRIORITY_CLASS] == "team-a.high"  # Kueue reads it from the Job
        assert LABEL_PRIORITY_CLASS not in job["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("name", ["High", "a_b", "-a", "a.", "x" * 64, ""])
def test_workload_priority_class_name_must_be_a_dns_subdomain_label_value(name):
    with pytest.raises(SpecError) as err:
        run_of(workloadPriorityClassName=name)
    assert "spec.workloadPriorityClassName" in str(err.value)


def test_uid_comes_from_run_metadata():
    doc = copy.deepcopy(CLUSTER)
    doc["metadata"]["uid"] = "abc-uid"
    run = parse_resource(doc)
    assert render_job(run, node_of(run, "i0-keywords"))["metadata"]["ownerReferences"][0]["uid"] == "abc-uid"


def test_command_and_embedded_stage_config_storage():
    run = run_of()
    node = node_of(run, "i1-pairs")
    job = render_stage(run, Start(node))
    assert job["kind"] == "Job"
    c = container(job)
    assert c["command"] == ["python", "-m", "synpo_workloads", "pairs", "--config", "/etc/synpo/stage.json"]
    assert {e["name"]: e.get("value") for e in c["env"]}["SYNPO_STAGE_CONFIG"] == "/etc/synpo/stage.json"
    assert c["image"] == "registry.example.com/synpo-workloads:0.1.0"
    # the stage config is a pod-template annotation (valid JSON, the stage_config document) ...
    text = job["spec"]["template"]["metadata"]["annotations"]["synpo.dev/stage-config"]
    config = json.loads(text)
    assert config == stage_config(run.spec, node, namespace="alignment", run="llama3-synpo",
                                  storage_root="/workspace/runs")
    assert config["output"] == "/workspace/runs/alignment/llama3-synpo/iter-1/pairs"
    # ... projected by a downwardAPI volume as stage.json, mounted read-only where the command reads it
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["workspace"] == {"name": "workspace",
                                    "persistentVolumeClaim": {"claimName": "synpo-workspace"}}
    assert volumes["stage-config"] == {"name": "stage-config", "downwardAPI": {"defaultMode": 0o444, "items": [
        {"path": "stage.json", "fieldRef": {"fieldPath": "metadata.annotations['synpo.dev/stage-config']"}}]}}
    assert not any("configMap" in v for v in volumes.values())
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/workspace"]["name"] == "workspace"
    assert mounts["/etc/synpo"] == {"name": "stage-config", "mountPath": "/etc/synpo", "readOnly": True}
    # the config hash is that of the embedded text
    assert job["metadata"]["annotations"]["synpo.dev/config-sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert artifacts_uri(run) == "pvc://synpo-workspace/runs/alignment/llama3-synpo"


def test_config_hash_follows_the_spec():
    run = run_of()
    node = node_of(run, "i1-pairs")
    before = render_job(run, node)["metadata"]["annotations"]["synpo.dev/config-sha256"]
    changed = run_of(pairsPerIteration=run.spec.pairs_per_iteration + 1)
    after = render_job(changed, node_of(changed, "i1-pairs"))["metadata"]["annotations"]["synpo.dev/config-sha256"]
    assert before != after


def test_uri_storage_has_no_volume():
    run = run_of(storage={"uri": "s3://bucket/runs"})
    job = render_stage(run, node_of(run, "i0-keywords"))
    assert embedded_config(job)["runRoot"] == "s3://bucket/runs/alignment/llama3-synpo"
    assert "workspace" not in {v["name"] for v in job["spec"]["template"]["spec"]["volumes"]}
    assert artifacts_uri(run) == "s3://bucket/runs/alignment/llama3-synpo"


def test_resources_gpu_only_on_gpu_stages():
    run = run_of()
    train = container(render_job(run, node_of(run, "i1-train")))["resources"]
    assert train["limits"] == {"cpu": "32", "memory": "512Gi", "nvidia.com/gpu": "8"}
    assert train["requests"] == {"cpu": "32", "memory": "512Gi"}  # models in the cache PVC, checkpoints on the run's
    keywords = container(render_job(run, node_of(run, "i0-keywords")))["resources"]
    assert "nvidia.com/gpu" not in keywords["limits"]
    cpu_only = run_of(resources={"gpusPerPod": 0}, storage={"volume": {"claimName": "synpo-workspace"}})
    assert container(render_job(cpu_only, node_of(cpu_only, "i1-train")))["resources"] == {
        "requests": {"ephemeral-storage": "17Gi"}}  # the model cache only
    # /dev/shm in memory only where GPUs are
    mounts = {m["mountPath"] for m in container(render_job(run, node_of(run, "i1-train")))["volumeMounts"]}
    assert "/dev/shm" in mounts


def test_resources_per_kind_of_stage():
    """training / generation / scoring override gpusPerPod, cpu and memory per kind; unset fields fall back."""
    resources = {**CLUSTER["spec"]["resources"], "gpuResourceName": "nvidia.com/mig-3g.40gb",
                 "training": {"nodes": 2, "gpusPerNode": 4, "memory": "256Gi"},
                 "generation": {"gpusPerPod": 2, "cpu": "16"},
                 "scoring": {"gpusPerPod": 0}}
    run = run_of(resources=resources, filter={"scorer": {"type": "rewardModel", "model": "org/rm"}})
    limits = {key: container(render_job(run, node_of(run, key)))["resources"]["limits"]
              for key in ("i1-train", "i0-prompt-generator", "i1-refine", "i1-pairs", "i0-keywords")}
    assert limits["i1-train"] == {"cpu": "32", "memory": "256Gi", "nvidia.com/mig-3g.40gb": "4"}
    assert limits["i0-prompt-generator"] == limits["i1-train"]
    # memory unset for generation: 2 of the node's 4 GPUs, half of resources.memory
    assert limits["i1-refine"] == {"cpu": "16", "memory": "256Gi", "nvidia.com/mig-3g.40gb": "2"}
    assert limits["i1-pairs"] == {"cpu": "32", "memory": "512Gi"}  # a GPU stage on the CPU: the whole pod
    assert limits["i0-keywords"] == {"cpu": "2", "memory": "8Gi"}  # resources.cpuStages' defaults
    shape = pod_shape(run.spec, node_of(run, "i1-train"))
    assert (shape.kind, shape.nodes, shape.processes_per_pod, shape.world_size) == ("training", 2, 4, 8)
    assert pod_shape(run.spec, node_of(run, "i1-evaluate")).processes_per_pod == 1  # vLLM: tensor parallel
    # a reward-model scorer gets one GPU by default, never more
    default = run_of(filter={"scorer": {"type": "rewardModel", "model": "org/rm"}})
    assert container(render_job(default, node_of(default, "i1-pairs")))["resources"]["limits"]["nvidia.com/gpu"] == "1"
    pairrm = run_of(filter={"scorer": {"type": "pairRM"}})  # PairRM's DeBERTa too
    assert container(render_job(pairrm, node_of(pairrm, "i1-pairs")))["resources"]["limits"]["nvidia.com/gpu"] == "1"
    with pytest.raises(ValueError, match="scoring.gpusPerPod"):
        run_of(resources={"scoring": {"gpusPerPod": 2}})
    with pytest.raises(ValueError, match="training.nodes"):
        run_of(resources={"training": {"nodes": 0}})


def test_placement():
    run = run_of()
    pod = render_job(run, node_of(run, "i1-train"))["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "batch-high"
    assert pod["serviceAccountName"] == "synpo-stages" and pod["automountServiceAccountToken"] is True
    without = run_of(resources={k: v for k, v in CLUSTER["spec"]["resources"].items() if k != "serviceAccountName"})
    pod = render_job(without, node_of(without, "i1-train"))["spec"]["template"]["spec"]
    assert "serviceAccountName" not in pod and pod["automountServiceAccountToken"] is False
    with_sa = run_of(resources={**CLUSTER["spec"]["resources"], "serviceAccountName": "synpo-runner"})
    pod = render_job(with_sa, node_of(with_sa, "i1-train"))["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "synpo-runner"


SPREAD_SHARDS = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
    "weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {
        "matchExpressions": [{"key": "synpo.dev/stage", "operator": "In", "values": ["responses"]}]}}}]}}
GPU_MODEL = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{
    "matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In",
                          "values": ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H200"]}]}]}}}


def test_affinity_and_image_pull_secrets_reach_every_stage_pod():
    resources = {**CLUSTER["spec"]["resources"], "imagePullSecrets": ["regcred", "mirror.example"],
                 "affinity": {**GPU_MODEL, **SPREAD_SHARDS}}
    run = run_of(resources=resources)
    for node in stage_graph(run.spec):
        pod = render_job(run, node)["spec"]["template"]["spec"]
        assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror.example"}]
        # passed through as written: no empty lists or maps added by the models' defaults; GPU stages only
        assert pod.get("affinity") == (None if node.id.name in ("keywords", "preflight") else {**GPU_MODEL, **SPREAD_SHARDS})
    plain = run_of()
    pod = render_job(plain, node_of(plain, "i1-train"))["spec"]["template"]["spec"]
    assert "affinity" not in pod and "imagePullSecrets" not in pod


@pytest.mark.parametrize("affinity, field", [
    ({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "gpu", "operator": "In"}]}]}}}, "needs at least one value"),
    ({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "gpu", "operator": "Near", "values": ["a"]}]}]}}}, "operator"),
    ({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "gpus", "operator": "Gt", "values": ["many"]}]}]}}}, "one integer"),
    ({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}},
     "nodeSelectorTerms"),
    ({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 0, "podAffinityTerm": {
        "topologyKey": "kubernetes.io/hostname", "labelSelector": {}}}]}}, "weight"),
    ({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {}}]}}, "topologyKey"),
    ({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{}]}},
      "hostNetwork": True}, "hostNetwork"),
])
def test_bad_affinity_names_the_field(affinity, field):
    with pytest.raises(ValueError, match=field):
        run_of(resources={**CLUSTER["spec"]["resources"], "affinity": affinity})


@pytest.mark.parametrize("secrets", [["Regcred"], ["a/b"], [""], ["x"] * 17, "regcred"])
def test_bad_image_pull_secrets_are_refused(secrets):
    with pytest.raises(ValueError, match="imagePullSecrets"):
        run_of(resources={**CLUSTER["spec"]["resources"], "imagePullSecrets": secrets})


@pytest.mark.parametrize("timeout, ok", [(None, True), (10, True), (604800, True), (9, False), (604801, False),
                                          ("60", False)])
def test_stuck_pod_timeout_bounds(timeout, ok):
    spec = {} if timeout is None else {"stuckPodTimeoutSeconds": timeout}
    if ok:
        assert run_of(**spec).spec.stuck_pod_timeout_seconds == (timeout or 900)
    else:
        with pytest.raises(ValueError, match="stuckPodTimeoutSeconds"):
            run_of(**spec)


def test_env_secrets_by_reference_only():
    run = run_of()
    env = {e["name"]: e for e in container(render_job(run, node_of(run, "i1-evaluate")))["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}
    assert env["AWS_REGION"] == {"name": "AWS_REGION", "value": "us-east-1"}
    assert env["SYNPO_JUDGE_API_KEY"] == {
        "name": "SYNPO_JUDGE_API_KEY", "valueFrom": {"secretKeyRef": {"name": "judge-api", "key": "token"}}}
    # the judge's key only reaches evaluation pods
    other = {e["name"] for e in container(render_job(run, node_of(run, "i1-train")))["env"]}
    assert "SYNPO_JUDGE_API_KEY" not in other and "HF_TOKEN" in other


def test_failure_policy_retries_and_deadline():
    run = run_of(backoffLimit=3, stageDeadlineSeconds=7200)
    spec = render_job(run, node_of(run, "i1-train"))["spec"]
    assert spec["backoffLimit"] == 3
    assert spec["activeDeadlineSeconds"] == 7200
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rules[1]["action"] == "FailJob"
    assert rules[1]["onExitCodes"] == {"containerName": "stage", "operator": "In", "values": [2]}
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert "ttlSecondsAfterFinished" not in spec


def test_sharded_stages_are_indexed_jobs():
    run = run_of()
    for key in ("i1-base-responses", "i2-responses", "i1-refine"):
        spec = render_job(run, node_of(run, key))["spec"]
        assert spec["completionMode"] == "Indexed"
        assert spec["completions"] == spec["parallelism"] == 8
    spec = render_job(run, node_of(run, "i1-train"))["spec"]
    assert "completionMode" not in spec and "completions" not in spec


def test_security_context_is_restricted():
    run = run_of(storage={"volume": {"claimName": "synpo-workspace"}})  # no model cache PVC: /cache an emptyDir
    job = render_job(run, node_of(run, "i1-train"))
    pod = job["spec"]["template"]["spec"]
    c = container(job)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]] and "emptyDir" in volumes[mounts["/cache"]]


def test_test_pod_annotations_selectors():
    doc = copy.deepcopy(CLUSTER)
    doc["metadata"]["annotations"] = {TEST_POD_ANNOTATIONS: json.dumps({
        "*": {"synpo.dev/fake-duration": "2s", "synpo.dev/fake-exit-code": "0"},
        "train": {"synpo.dev/fake-exit-code": "1"},
        "i2-train": {"synpo.dev/fake-exit-code": "0", "synpo.dev/fake-termination-message": "{\"rows\": 1}"},
        "i0-evaluate": {ANNOTATION_STAGE_CONFIG: "{}"},  # not a fake-* key: ignored, the real config stays
    })}
    run = parse_resource(doc)

    def ann(key):
        annotations = dict(render_job(run, node_of(run, key))["spec"]["template"]["metadata"]["annotations"])
        assert json.loads(annotations.pop(ANNOTATION_STAGE_CONFIG))["stage"] == node_of(run, key).id.name
        assert annotations.pop("synpo.dev/gpus-per-pod") == str(gpus_for(run.spec, node_of(run, key)))
        return annotations

    assert ann("i0-keywords") == {"synpo.dev/fake-duration": "2s", "synpo.dev/fake-exit-code": "0"}
    assert ann("i1-train")["synpo.dev/fake-exit-code"] == "1"
    assert ann("i2-train")["synpo.dev/fake-exit-code"] == "0"
    assert ann("i2-train")["synpo.dev/fake-termination-message"] == '{"rows": 1}'
    assert ann("i0-evaluate") == {"synpo.dev/fake-duration": "2s", "synpo.dev/fake-exit-code": "0"}
    # malformed annotations are ignored, not fatal
    doc["metadata"]["annotations"] = {TEST_POD_ANNOTATIONS: "{not json"}
    run = parse_resource(doc)
    assert ann("i0-keywords") == {}


def test_every_stage_config_is_embedded():
    run = run_of()
    for node in stage_graph(run.spec):
        job = render_job(run, node)
        text = job["spec"]["template"]["metadata"]["annotations"][ANNOTATION_STAGE_CONFIG]
        assert json.loads(text) == stage_config(run.spec, node, namespace="alignment", run="llama3-synpo",
                                                storage_root="/workspace/runs")
    assert stage_config_problems(run) == [] and jobs_spec_problems(run) == []


def oversized_run():
    """A valid run whose spec (and so every stage config) is over MAX_STAGE_CONFIG_BYTES."""
    doc = copy.deepcopy(CLUSTER)
    doc["spec"]["env"] = [{"name": f"PAD_{i}", "value": "x" * 4000} for i in range(60)]
    return parse_resource(doc)


def test_oversized_stage_config_is_a_clear_error():
    run = oversized_run()
    node = node_of(run, "i1-train")
    with pytest.raises(StageConfigTooLarge) as err:
        render_job(run, node)
    size = err.value.size
    assert size > MAX_STAGE_CONFIG_BYTES and err.value.stage == "i1-train"
    message = str(err.value)
    assert "i1-train" in message and str(size) in message and str(MAX_STAGE_CONFIG_BYTES) in message
    with pytest.raises(ValueError):
        render_stage(run, Start(node))
    # the Jobs executor reports it as an invalid spec, naming each stage, before starting anything
    problems = jobs_spec_problems(run)
    assert len(problems) == len(stage_graph(run.spec))
    assert any(p.startswith("stage i1-train:") and str(size) in p for p in problems)


def test_stage_config_bound_leaves_room_for_other_annotations():
    assert MAX_STAGE_CONFIG_BYTES <= 256 * 1024 - 32 * 1024


def test_render_run_manifests_first_and_all():
    run = run_of()
    first = render_run_manifests(run)
    assert [m["metadata"]["name"] for m in first] == ["llama3-synpo-i0-preflight"]
    # the pre-flight runs in the stage pods' environment, on a CPU, with each judge's key
    pod = first[0]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert not any("gpu" in k for k in (container.get("resources") or {}).get("limits", {}))
    assert container["command"][-3:-2] == ["preflight"] or "preflight" in container["command"]
    env = {e["name"] for e in container["env"]}
    assert {"SYNPO_JUDGE_API_KEY", "SYNPO_JUDGE_0_API_KEY"} <= env
    every = render_run_manifests(run, all_stages=True)
    assert len(every) == len(stage_graph(run.spec))
    assert all(m["kind"] == "Job" for m in every)
    assert len({m["metadata"]["name"] for m in every if m["kind"] == "Job"}) == len(stage_graph(run.spec))


def test_plan_manifests_cli(capsys):
    from synpo_operator.cli import main

    assert main(["plan", str(ROOT / "examples" / "cluster-llama3.yaml"), "--manifests"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert {d["kind"] for d in docs} == {"Job"}


names = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    gpus=st.integers(0, 16), shards=st.integers(1, 8), backoff=st.integers(0, 20),
    selector=st.dictionaries(names, names, max_size=3),
    env=st.lists(st.tuples(st.from_regex(r"[A-Z][A-Z0-9_]{0,8}", fullmatch=True), names, st.booleans()),
                 max_size=4, unique_by=lambda e: e[0]),  # each name once (the models refuse a repeat)
    queue=st.one_of(st.none(), names), volume=st.booleans(),
)
def test_no_spec_can_escalate(gpus, shards, backoff, selector, env, queue, volume):
    """Whatever the spec says: no hostPath, no privilege, no added capability, no secret value inline."""
    doc = copy.deepcopy(CLUSTER)
    spec = doc["spec"]
    spec["resources"].update(gpusPerPod=gpus, nodeSelector=selector)
    spec["generation"]["shards"] = shards
    spec["backoffLimit"] = backoff
    spec["queueName"] = queue
    spec["env"] = [({"name": n, "secretKeyRef": {"name": v, "key": "k"}} if secret else {"name": n, "value": v})
                   for n, v, secret in env]
    spec["storage"] = {"volume": {"claimName": "ws"}} if volume else {"uri": "s3://b/r"}
    run = parse_resource(doc)
    for node in stage_graph(run.spec):
        for manifest in [render_stage(run, node)]:
            pairs = list(walk(manifest))
            keys = {k for k, _ in pairs}
            assert "hostPath" not in keys and "hostNetwork" not in keys and "hostPID" not in keys
            assert all(v is not True for k, v in pairs if k in ("privileged", "allowPrivilegeEscalation"))
            assert all(not v for k, v in pairs if k == "add")
            assert "suspend" not in manifest.get("spec", {}) or queue


@pytest.mark.parametrize("key", ["i0-keywords", "i1-refine", "i4-evaluate"])
def test_manifests_are_plain_yaml(key):
    run = run_of()
    manifest = render_stage(run, node_of(run, key))
    assert yaml.safe_load(yaml.safe_dump(manifest)) == manifest


def test_pod_cache_drops_the_stage_config():
    from synpo_operator.kube import POD_STAGE_CONFIG_ANNOTATION, slim_pod

    assert POD_STAGE_CONFIG_ANNOTATION == ANNOTATION_STAGE_CONFIG
    doc = copy.deepcopy(CLUSTER)
    doc["metadata"]["annotations"] = {TEST_POD_ANNOTATIONS: json.dumps({"*": {"synpo.dev/fake-duration": "1s"}})}
    run = parse_resource(doc)
    template = render_job(run, node_of(run, "i1-train"))["spec"]["template"]
    pod = {"metadata": {**copy.deepcopy(template["metadata"]), "name": "p", "managedFields": [{}]},
           "spec": copy.deepcopy(template["spec"]), "status": {"phase": "Running"}}
    slim = slim_pod(pod)
    assert slim["metadata"]["annotations"] == {"synpo.dev/fake-duration": "1s", "synpo.dev/gpus-per-pod": "8"}
    assert "managedFields" not in slim["metadata"] and slim["status"] == {"phase": "Running"}
    assert ANNOTATION_STAGE_CONFIG in pod["metadata"]["annotations"]  # the input is not modified


def test_run_cache_drops_kubectls_last_applied_copy():
    from synpo_operator.kube import LAST_APPLIED, slim

    run = {"metadata": {"name": "r", "annotations": {LAST_APPLIED: "{...}", TEST_POD_ANNOTATIONS: "{}"}},
           "spec": {"iterations": 1}}
    assert slim(run) == {"metadata": {"name": "r", "annotations": {TEST_POD_ANNOTATIONS: "{}"}},
                         "spec": {"iterations": 1}}
    assert slim({"metadata": {"name": "r"}}) == {"metadata": {"name": "r"}}


def test_toleration_key_and_value_have_the_label_syntax_the_api_server_enforces():
    """Found by the bad-input test: a key the models took made every Job create a 422, retried forever."""
    with pytest.raises(ValueError, match=r"spec\.resources\.tolerations\[0\]\.key: must be a Kubernetes label key"):
        run_of(resources={"tolerations": [{"key": "nvidia.com/gpu/../x", "operator": "Exists"}]})
    with pytest.raises(ValueError, match=r"spec\.resources\.tolerations\[0\]\.value"):
        run_of(resources={"tolerations": [{"key": "gpu", "value": "a b"}]})
    ok = run_of(resources={"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}, {"operator": "Exists"}]})
    assert len(ok.spec.resources.tolerations) == 2
