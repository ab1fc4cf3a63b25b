"""Security properties that need no cluster (issue #8); the API-server half is
tests/integration/test_reliability_security.py.

- Storage paths cannot escape the run's root: the models refuse '..' segments, and the CRD's CEL rule (the
  same check at apply time) agrees with the models on every string (property test).
- No rendered Job ever has a hostPath, host namespaces, privilege, added capabilities or a secret value,
  for any valid spec (property test through `render_run_manifests(..., all_stages=True)`).
- The testing hook `synpo.dev/test-pod-annotations` copies only the fake kubelet's `synpo.dev/fake-*` keys.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from synpo_operator.api.common import _NO_TRAVERSAL_RULE
from synpo_operator.api.crd import crds
from synpo_operator.api.loader import SpecError, parse_resource
from synpo_operator.executors.manifests import TEST_POD_ANNOTATIONS, render_run_manifests

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = yaml.safe_load((ROOT / "examples" / "cluster-llama3.yaml").read_text())
SCHEDULE = yaml.safe_load((ROOT / "examples" / "schedule-weekly.yaml").read_text())

ESCAPES = [
    ("storage", {"uri": "s3://bucket/../other-team"}),
    ("storage", {"uri": "../runs"}),
    ("storage", {"uri": "runs/.."}),
    ("storage", {"uri": "C:\\runs\\..\\x"}),
    ("storage", {"volume": {"claimName": "ws", "subPath": "../x"}}),
    ("storage", {"volume": {"claimName": "ws", "subPath": "runs/../../x"}}),
    ("model", {"base": "../../etc/models"}),
    ("data", {"seed": "s3://d/../seed.jsonl", "corpus": "s3://d/c.jsonl", "eval": "s3://d/e.jsonl"}),
]


def _cel_regex() -> re.Pattern:
    """The CEL rule's RE2 pattern, as Python sees it (the CEL string literal unescaped once)."""
    literal = re.fullmatch(r"!self\.matches\('(.*)'\)", _NO_TRAVERSAL_RULE["rule"]).group(1)
    return re.compile(literal.encode().decode("unicode_escape"))


@pytest.mark.parametrize("field, value", ESCAPES, ids=[json.dumps(v) for _, v in ESCAPES])
def test_models_refuse_path_escapes(field, value):
    doc = copy.deepcopy(CLUSTER)
    doc["spec"][field] = value
    with pytest.raises(SpecError) as err:
        parse_resource(doc)
    assert any(p.startswith(f"spec.{field}") and "must not contain '..'" in p for p in err.value.problems), \
        err.value.problems


def test_schedule_template_refuses_path_escapes():
    doc = copy.deepcopy(SCHEDULE)
    doc["spec"]["runTemplate"]["spec"]["storage"] = {"volume": {"claimName": "ws", "subPath": "a/../../b"}}
    with pytest.raises(SpecError) as err:
        parse_resource(doc)
    assert any("must not contain '..'" in p for p in err.value.problems)


def test_every_path_field_of_the_crds_carries_the_rule():
    """Every string the models check for '..' has the CEL rule at apply time, in both CRDs."""
    rule = _NO_TRAVERSAL_RULE["rule"]
    for crd in crds():
        text = json.dumps(crd)
        # model.base, data.seed/corpus/eval, storage.uri, storage.volume.subPath (+ judge and scorer models)
        assert text.count(rule.replace("\\", "\\\\").replace('"', '\\"')) >= 6, crd["metadata"]["name"]


path_chars = st.sampled_from(list("ab./\\:-_ ") + ["..", "../", "/..", "\\..", "s3://", "%2e"])


@settings(max_examples=400, deadline=None)
@given(st.lists(path_chars, min_size=1, max_size=12).map("".join))
def test_cel_rule_and_models_agree(path):
    """For any string: the CEL rule rejects it iff the models do (so the API server and the operator never
    disagree about a storage path)."""
    doc = copy.deepcopy(CLUSTER)
    doc["spec"]["storage"] = {"uri": path}
    try:
        parse_resource(doc)
        models_ok = True
    except SpecError as err:
        relevant = [p for p in err.problems if "'..'" in p]
        models_ok = not relevant
    cel_ok = _cel_regex().search(path) is None
    assert models_ok == cel_ok, (path, models_ok, cel_ok)


# ---- rendered Jobs, for any valid spec -------------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
secret_values = st.from_regex(r"canary-[a-f0-9]{12}", fullmatch=True)


@st.composite
def valid_runs(draw):
    doc = copy.deepcopy(CLUSTER)
    spec = doc["spec"]
    doc["metadata"]["name"] = draw(names)
    spec["iterations"] = draw(st.integers(1, 3))
    spec["generation"]["shards"] = draw(st.integers(1, 4))
    spec["resources"]["gpusPerPod"] = draw(st.integers(0, 8))
    spec["resources"]["image"] = draw(st.sampled_from(["img:1", "registry.example/x/y@sha256:" + "a" * 64]))
    spec["resources"]["nodeSelector"] = draw(st.dictionaries(names, names, max_size=2))
    spec["resources"]["tolerations"] = draw(st.lists(st.fixed_dictionaries({
        "key": names, "operator": st.just("Exists"),
        "effect": st.sampled_from(["NoSchedule", "NoExecute", "PreferNoSchedule"])}), max_size=2))
    if draw(st.booleans()):
        spec["resources"]["serviceAccountName"] = draw(names)
    else:
        spec["resources"].pop("serviceAccountName", None)
    if draw(st.booleans()):
        spec["storage"] = {"volume": {"claimName": draw(names),
                                      "subPath": draw(st.sampled_from(["runs", "a/b", "team-x/runs"]))}}
    else:
        spec["storage"] = {"uri": draw(st.sampled_from(["s3://b/runs", "gs://b/x/y", "pvc://ws/r"]))}
    if not draw(st.booleans()):
        spec.pop("queueName", None)
    env = []
    for i in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            env.append({"name": f"S{i}", "secretKeyRef": {"name": draw(names), "key": draw(names)}})
        else:
            env.append({"name": f"V{i}", "value": draw(st.text(max_size=20))})
    spec["env"] = env
    judges = [{"type": "openai", "endpoint": "http://judge:8000/v1", "model": "judge",
               "apiKeySecretRef": {"name": draw(names), "key": draw(names)}}
              for _ in range(draw(st.integers(0, 2)))]
    spec["evaluation"] = {"judges": judges or [{"type": "similarity"}]}
    try:
        run = parse_resource(doc)
    except SpecError:
        assume(False)
    return run


FORBIDDEN = ("hostPath", "hostNetwork", "hostPID", "hostIPC", "hostPort", "hostUsers", "procMount")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_runs())
def test_no_rendered_job_has_host_access_or_privilege(run):
    secret_refs = {(e.name, e.secret_key_ref.name) for e in run.spec.env if e.secret_key_ref}
    for manifest in render_run_manifests(run, all_stages=True):
        text = json.dumps(manifest)
        for word in FORBIDDEN:
            assert word not in text, (word, manifest["metadata"]["name"])
        if manifest["kind"] != "Job":
            continue
        pod = manifest["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for volume in pod["volumes"]:
            assert set(volume) - {"name"} <= {"emptyDir", "downwardAPI", "persistentVolumeClaim"}, volume
            if "downwardAPI" in volume:  # only the stage config annotation, nothing else about the pod
                assert [i["fieldRef"]["fieldPath"] for i in volume["downwardAPI"]["items"]] == [
                    "metadata.annotations['synpo.dev/stage-config']"], volume
        for container in pod["containers"] + pod.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
            assert sc["readOnlyRootFilesystem"] is True
            env = {e["name"]: e for e in container.get("env", [])}
            for name, _secret in secret_refs:
                assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]
            for name, var in env.items():
                if "API_KEY" in name:
                    assert "value" not in var and var["valueFrom"]["secretKeyRef"]
        if not run.spec.resources.service_account_name:
            assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("key", ["container.apparmor.security.beta.kubernetes.io/stage",
                                 "vault.hashicorp.com/agent-inject", "sidecar.istio.io/inject",
                                 "seccomp.security.alpha.kubernetes.io/pod", "synpo.dev/other"])
def test_testing_hook_copies_only_fake_kubelet_annotations(key):
    doc = copy.deepcopy(CLUSTER)
    doc["metadata"]["annotations"] = {TEST_POD_ANNOTATIONS: json.dumps(
        {"*": {key: "unconfined", "synpo.dev/fake-duration": "1s"}})}
    for manifest in render_run_manifests(parse_resource(doc), all_stages=True):
        if manifest["kind"] == "Job":
            annotations = dict(manifest["spec"]["template"]["metadata"].get("annotations") or {})
            json.loads(annotations.pop("synpo.dev/stage-config"))  # the operator's own: the stage config
            assert annotations.pop("synpo.dev/gpus-per-pod").isdigit()  # and the pod's GPU count
            assert annotations == {"synpo.dev/fake-duration": "1s"}, annotations
