"""Bad input through the real API server and the running operator (issue #8; the models-only half is
tests/unit/test_bad_input_properties.py, bad stage data files are covered in tests/workloads/).

Hypothesis mutates the examples (examples/*.yaml and the integration tests' small run): wrong types,
out-of-range numbers, unknown fields, missing sections, odd strings, odd names, a broken testing annotation.
Each document is POSTed with fieldValidation=Strict and must be either

- rejected: HTTP 400/422 with a message naming the field, or
- accepted: then the operator must plan it (status.phase Pending/Running/Succeeded/Suspended) or mark it
  Failed with a reason and message (InvalidSpec for what only the models see) — never a traceback in status;
  schedules get a Ready condition (InvalidSpec when the models refuse what the schema let through).

At the end the operator process is the one started at the beginning (0 restarts), /healthz answers, and every
accepted object can be deleted.
"""

from __future__ import annotations

import copy
import json
import re
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synpo_devcluster.client import ApiError

from .test_operator import RUNS, crds, operator, run_doc  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCHEDULES = "/apis/synpo.dev/v1alpha1/namespaces/{ns}/synposchedules"
QUICKSTART = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
CLUSTER = yaml.safe_load((ROOT / "examples" / "cluster-llama3.yaml").read_text())
SMALL = run_doc("small")
SCHEDULE = yaml.safe_load((ROOT / "examples" / "schedule-weekly.yaml").read_text())
MAX_RUNS = 60
MAX_SCHEDULES = 20

# "<field path>..." somewhere in the message: spec.x, metadata.name, spec.runTemplate.spec.x, unknown field "..."
NAMES_A_FIELD = re.compile(r"(\b(spec|metadata)(\.|\[|:| in body)|unknown field \"|\.spec\b|\bname\b)")
PLANNED = {"Pending", "Running", "Succeeded", "Suspended"}
TRACEBACK = re.compile(r"Traceback|File \"/|line \d+, in ")

odd_strings = st.sampled_from([
    "", " ", "../../etc/passwd", "s3://bucket/../../other", "a/../b", "\u0000", "x" * 300, "x" * 5000,
    "UPPER_case", "-leading-dash", "name.with.dots", "ünïcødé", "${HOME}", "'; DROP TABLE runs; --",
    "{{ .Values }}", "1e309", "NaN", "0x10", "-1", "true",
])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
                    st.sampled_from([0, -1, 1, 2**31, 10**15, -10**9]),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40), odd_strings)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=3)),
                      max_leaves=6)
UNKNOWN_KEYS = st.sampled_from(["hostPath", "privileged", "securityContext", "volumes", "command", "args",
                                "image", "extra", "Iterations", "iterations "]) | st.text(min_size=1, max_size=12)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, sub in node.items():
            yield from _paths(sub, prefix + (key,))
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            yield from _paths(sub, prefix + (i,))


def _same_type(value):
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.one_of(st.integers(-5, 5), st.sampled_from([0, 1, 2**31, 10**12]), st.integers(0, 100000))
    if isinstance(value, float):
        return st.one_of(st.floats(-2, 2, allow_nan=False), st.sampled_from([0.0, 1e-12, 1e12, -0.0]))
    if isinstance(value, str):
        return st.one_of(odd_strings, st.text(max_size=20), st.just(value + "/../x"), st.just(value.upper()))
    if isinstance(value, list):
        return st.sampled_from([[], value * 3, value[:1]])
    if isinstance(value, dict):
        return st.sampled_from([{}, value])
    return values


def _mutate(draw, root: dict) -> None:
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(root) if p]
        if not paths:
            return
        path = draw(st.sampled_from(paths))
        parent = root
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["same-type", "same-type", "same-type", "replace", "delete", "add"]))
        if action == "same-type":  # a value of the right type, often out of range or odd: reaches the operator
            parent[path[-1]] = draw(_same_type(parent[path[-1]]))
        elif action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(UNKNOWN_KEYS)] = draw(values)
        else:
            parent[path[-1]] = draw(values)


@st.composite
def run_documents(draw):
    doc = copy.deepcopy(draw(st.sampled_from([QUICKSTART, CLUSTER, SMALL])))
    doc["metadata"] = {k: v for k, v in doc["metadata"].items() if k == "annotations"}
    spec = {"spec": doc["spec"]}
    _mutate(draw, spec)
    if "spec" in spec:
        doc["spec"] = spec["spec"]
    else:
        del doc["spec"]
    if draw(st.integers(0, 9)) == 0:  # the testing hook annotation, broken
        doc["metadata"]["annotations"] = {"synpo.dev/test-pod-annotations": draw(st.sampled_from(
            ["not json", "[]", '{"*": 5}', '{"*": {"synpo.dev/fake-exit-code": 7}}', '{"": {"a": "b"}}', "null"]))}
    name = draw(st.sampled_from([None] * 6 + ["UPPER", "x" * 41, "a_b", "-x", "ok-name.with.dots"]))
    return doc, name


@st.composite
def schedule_documents(draw):
    doc = copy.deepcopy(SCHEDULE)
    doc["metadata"] = {}
    spec = {"spec": doc["spec"]}
    _mutate(draw, spec)
    if "spec" in spec:
        doc["spec"] = spec["spec"]
    else:
        del doc["spec"]
    return doc


def _message(err: ApiError) -> str:
    body = err.body
    if isinstance(body, dict):
        causes = " ".join(f"{c.get('field', '')}: {c.get('message', '')}"
                          for c in (body.get("details") or {}).get("causes") or [])
        return f"{body.get('message', '')} {causes}"
    return str(body)


def _post(kube, path: str, doc: dict, outcomes: Counter, rejected: list) -> bool:
    try:
        kube.post(path, doc, fieldValidation="Strict")
        return True
    except ApiError as err:
        outcomes[f"rejected {err.status}"] += 1
        message = _message(err)
        assert err.status in (400, 422), (err.status, message, json.dumps(doc)[:2000])
        assert NAMES_A_FIELD.search(message), f"rejection names no field: {message!r} for {json.dumps(doc)[:1500]}"
        assert not TRACEBACK.search(message)
        rejected.append(message[:200])
        return False


def test_mutated_runs_and_schedules_through_api_server_and_operator(kube, operator, namespace):  # noqa: F811
    outcomes: Counter = Counter()
    rejected: list[str] = []
    runs: list[str] = []
    schedules: list[str] = []
    counter = {"run": 0, "schedule": 0}

    @settings(max_examples=MAX_RUNS, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(run_documents())
    def send_run(case):
        doc, odd_name = case
        counter["run"] += 1
        name = odd_name or f"bad-{counter['run']}"
        if odd_name:
            name = f"{odd_name}{counter['run']}" if odd_name != "x" * 41 else odd_name
        doc = copy.deepcopy(doc)
        doc["metadata"]["name"] = name
        if _post(kube, RUNS.format(ns=namespace), doc, outcomes, rejected):
            outcomes["run accepted"] += 1
            runs.append(name)

    @settings(max_examples=MAX_SCHEDULES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(schedule_documents())
    def send_schedule(doc):
        counter["schedule"] += 1
        doc = copy.deepcopy(doc)
        doc["metadata"]["name"] = f"sched-{counter['schedule']}"
        if _post(kube, SCHEDULES.format(ns=namespace), doc, outcomes, rejected):
            outcomes["schedule accepted"] += 1
            schedules.append(doc["metadata"]["name"])

    send_run()
    send_schedule()

    # every accepted run: planned, or failed with a reason and a message; never a traceback
    verdicts: Counter = Counter()
    pending = set(runs)
    deadline = time.monotonic() + 300  # 60 runs on a loaded 2-core machine (the whole suite runs alongside)
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            status = (kube.get(f"{RUNS.format(ns=namespace)}/{name}").get("status") or {})
            phase = status.get("phase")
            if not phase:
                continue
            assert not TRACEBACK.search(json.dumps(status)), (name, status)
            if phase == "Failed":
                failed = {c["type"]: c for c in status.get("conditions", [])}.get("Failed") or {}
                assert failed.get("status") == "True" and failed.get("reason") and failed.get("message"), status
                verdicts[f"Failed/{failed['reason']}"] += 1
                if failed["reason"] == "InvalidSpec":
                    assert NAMES_A_FIELD.search(failed["message"]), failed["message"]
            else:
                assert phase in PLANNED, (name, status)
                verdicts[phase] += 1
            pending.discard(name)
            kube.delete(f"{RUNS.format(ns=namespace)}/{name}")  # keep the fake cluster quiet
        time.sleep(0.5)
    assert not pending, (f"runs the operator never planned nor failed: {sorted(pending)}; operator log:\n"
                         + "\n".join(line for line in operator.logs().splitlines()
                                      if any(name in line for name in pending) or "Traceback" in line
                                      or "Error" in line)[-6000:])

    pending = set(schedules)
    deadline = time.monotonic() + 120
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            status = kube.get(f"{SCHEDULES.format(ns=namespace)}/{name}").get("status") or {}
            ready = {c["type"]: c for c in status.get("conditions", [])}.get("Ready")
            if not ready:
                continue
            assert not TRACEBACK.search(json.dumps(status)), (name, status)
            verdicts[f"schedule {ready['status']}/{ready.get('reason')}"] += 1
            pending.discard(name)
            kube.delete(f"{SCHEDULES.format(ns=namespace)}/{name}", propagationPolicy="Background")
        time.sleep(0.5)
    assert not pending, f"schedules the operator never looked at: {sorted(pending)}"

    # deletions go through, however odd the run (runs carry no finalizer)
    kube.wait_for(RUNS.format(ns=namespace), lambda o: not o["items"], timeout=120)

    assert operator.proc.poll() is None, operator.logs()[-3000:]
    assert operator.starts == 1
    urllib.request.urlopen(f"http://127.0.0.1:{operator.port}/healthz", timeout=5).read()
    logs = operator.logs()
    errors = [line for line in operator.metrics().splitlines() if line.startswith("synpo_reconcile_errors_total{")]
    print(f"RELIABILITY input=api-server runs_tried={counter['run']} schedules_tried={counter['schedule']} "
          f"outcomes={dict(outcomes)} verdicts={dict(verdicts)} reconcile_errors={errors} "
          f"tracebacks_in_log={logs.count('Traceback')} operator_restarts={operator.starts - 1}")
    assert "Traceback" not in logs, logs[logs.index("Traceback") - 2000:][:6000]


NEW_USER_MISTAKES = [  # (path, value, field the API server's message names)
    (("spec", "iterations"), True, "spec.iterations"),
    (("spec", "iterations"), "4", "spec.iterations"),
    (("spec", "model", "base"), "org/model\u0000", "spec.model.base"),
    (("spec", "data", "seed"), "s3://data/seed.jsonl\nx", "spec.data.seed"),
    (("spec", "resources", "nodeSelector"), {"a": "b c"}, "spec.resources.nodeSelector"),
    (("spec", "resources", "nodeSelector"), {"bad key!": "x"}, "spec.resources.nodeSelector"),
    (("spec", "evaluation", "judges"), [{"type": "pairRM"}], "spec.evaluation.judges"),  # a filter scorer only
    (("spec", "resources", "training"), {"extraResources": {"kubernetes.io/x": 1}},
     "spec.resources.training.extraResources"),
    (("spec", "resources", "training"), {"extraResources": {"cpu": 1}}, "spec.resources.training.extraResources"),
    (("spec", "resources", "training"), {"podAnnotations": {"synpo.dev/stage-config": "{}"}},
     "spec.resources.training.podAnnotations"),
    (("spec", "resources", "training"), {"podLabels": {"a.kubernetes.io/x": "y"}}, "spec.resources.training.podLabels"),
    (("spec", "resources", "training"), {"extraResources": {"nvidia.com/gpu": 1}}, "spec.resources"),
]


@pytest.mark.parametrize(("path", "value", "field"), NEW_USER_MISTAKES,
                         ids=[f"{'.'.join(p)}={v!r}" for p, v, _ in NEW_USER_MISTAKES])
def test_new_user_mistakes_are_refused_by_the_api_server_and_locally_alike(kube, crds, namespace,  # noqa: F811
                                                                          path, value, field):
    """What `synpo plan` refuses, the API server refuses too (and the other way round), naming the field."""
    from synpo_operator.api.loader import SpecError, parse_resource

    doc = copy.deepcopy(SMALL)
    node = doc
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    with pytest.raises(SpecError) as local:
        parse_resource(doc, "run.yaml")
    assert any(p.startswith(field) for p in local.value.problems), local.value.problems
    with pytest.raises(ApiError) as remote:
        kube.post(RUNS.format(ns=namespace), doc, fieldValidation="Strict")
    assert remote.value.status in (400, 422), remote.value
    assert field in str(remote.value), str(remote.value)
