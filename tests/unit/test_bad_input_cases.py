"""Bad input a new user runs into (issue 16): each is refused with a message naming the field, by the models
(`synpo plan`, `synpo run`, the operator) and by the CRD schema the API server applies, never a traceback."""

from __future__ import annotations

import copy
import re

import jsonschema
import pytest
import yaml

from synpo_operator.api.crd import crds
from synpo_operator.api.loader import MAX_DEPTH, SpecError, load_documents, parse_resource
from synpo_operator.cli import main

from .conftest import ROOT

QUICKSTART = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())


def _run_schema() -> dict:
    crd = next(c for c in crds() if c["spec"]["names"]["kind"] == "SynPORun")
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _with(path: tuple, value) -> dict:
    doc = copy.deepcopy(QUICKSTART)
    node = doc
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return doc


def _problems(doc: dict) -> list[str]:
    with pytest.raises(SpecError) as err:
        parse_resource(doc, "run.yaml")
    return err.value.problems


def _schema_errors(doc: dict) -> list[str]:
    """What the CRD's OpenAPI schema says (patterns and types; CEL rules are checked by the API server)."""
    validator = jsonschema.Draft7Validator(_run_schema())
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("nesting", ["[" * 5000 + "]" * 5000, "{a: " * 5000 + "1" + "}" * 5000])
def test_yaml_nested_5000_levels_is_an_error_not_a_traceback(nesting, tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text("apiVersion: synpo.dev/v1alpha1\nkind: SynPORun\nmetadata: {name: deep}\n"
                    f"spec:\n  model: {nesting}\n")
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"nested more than {MAX_DEPTH} levels deep" in err and "line 5" in err
    assert "Traceback" not in err and "RecursionError" not in err
    # a document as deep as the schema's own nesting still loads
    assert load_documents("a: " + "{b: " * 20 + "1" + "}" * 20)


@pytest.mark.parametrize("value", [True, False, "4", 2.0, 2.5])
def test_iterations_must_be_a_whole_number_as_the_api_server_says(value):
    doc = _with(("spec", "iterations"), value)
    problems = _problems(doc)
    assert len(problems) == 1 and problems[0].startswith("spec.iterations: "), problems
    assert "integer" in problems[0]
    assert _schema_errors(doc), "the CRD schema must refuse it too (local validation matches the CRD)"


def test_a_whole_number_is_still_a_valid_float():
    run = parse_resource(_with(("spec", "generation", "temperature"), 1), "run.yaml")
    assert run.spec.generation.temperature == 1.0


@pytest.mark.parametrize("path", [("spec", "data", "seed"), ("spec", "model", "base")])
@pytest.mark.parametrize("bad", ["builtin:seed.jsonl\x00", "org/model\nname", "a\tb", "x\x7f"])
def test_control_characters_in_data_and_model_refs_are_refused(path, bad):
    doc = _with(path, bad)
    problems = _problems(doc)
    assert any(p.startswith(".".join(path) + ": must not contain control characters") for p in problems), problems
    assert any(e.startswith(".".join(path)) for e in _schema_errors(doc))


@pytest.mark.parametrize("selector, field", [
    ({"a": "b c"}, "spec.resources.nodeSelector.a: must be a Kubernetes label value"),
    ({"gpu": "-x"}, "spec.resources.nodeSelector.gpu: must be a Kubernetes label value"),
    ({"gpu": "x" * 64}, "spec.resources.nodeSelector.gpu: String should have at most 63 characters"),
    ({"bad key!": "x"}, "spec.resources.nodeSelector: key 'bad key!' must be a Kubernetes label key"),
    ({"example.com/": "x"}, "spec.resources.nodeSelector: key 'example.com/' must be a Kubernetes label key"),
])
def test_node_selector_must_use_label_syntax(selector, field):
    doc = _with(("spec", "resources", "nodeSelector"), selector)
    problems = _problems(doc)
    assert any(p.startswith(field) for p in problems), problems


def test_node_selector_rules_are_in_the_crd():
    selector = _run_schema()["properties"]["spec"]["properties"]["resources"]["properties"]["nodeSelector"]
    assert selector["additionalProperties"]["pattern"]
    rule = selector["x-kubernetes-validations"][0]
    assert rule["rule"].startswith("self.all(k, k.matches(") and "label key" in rule["message"]
    assert _schema_errors(_with(("spec", "resources", "nodeSelector"), {"a": "b c"}))


def test_valid_label_syntax_passes():
    selector = {"nvidia.com/gpu.product": "H100-80GB_HBM3", "kubernetes.io/arch": "amd64", "pool": ""}
    run = parse_resource(_with(("spec", "resources", "nodeSelector"), selector), "run.yaml")
    assert run.spec.resources.node_selector == selector


SCHEDULE = yaml.safe_load((ROOT / "examples" / "schedule-weekly.yaml").read_text())


def _go_schema_errors(doc: dict, kind: str = "SynPORun") -> list[str]:
    """The CRD schema as the API server reads it: OpenAPI 3.0 (draft 4's boolean exclusiveMinimum), and Go's
    regexp, whose `$` matches only at the end of the text (Python's also matches before a final newline)."""
    def pattern(validator, regex, instance, schema):
        if validator.is_type(instance, "string") and not re.search(re.sub(r"\$$", r"\\Z", regex), instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {regex!r}")

    crd = next(c for c in crds() if c["spec"]["names"]["kind"] == kind)
    validator = jsonschema.validators.extend(jsonschema.Draft4Validator, {"pattern": pattern})(
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def _in_schedule(path: tuple, value) -> dict:
    doc = copy.deepcopy(SCHEDULE)
    node = doc["spec"]["runTemplate"]
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return doc


def _both(path: tuple, value) -> list[tuple[dict, str, str]]:
    """The bad value in a run and in a schedule's runTemplate: (document, kind, field path of the value)."""
    return [(_with(path, value), "SynPORun", ".".join(path)),
            (_in_schedule(path, value), "SynPOSchedule", "spec.runTemplate." + ".".join(path))]


IMAGE = ("spec", "resources", "image")


@pytest.mark.parametrize("bad", ["registry.example/synpo:1 ", " registry.example/synpo:1", "registry.example/synpo:1\n",
                                 "registry.example/synpo\n:1", "synpo workloads:1", "synpo:\t1", "Registry/Synpo:1",
                                 "synpo:1@sha256:zz", "registry.example//synpo", "synpo:"])
def test_an_image_that_is_not_an_image_reference_is_refused(bad):
    for doc, kind, field in _both(IMAGE, bad):
        with pytest.raises(SpecError) as err:
            parse_resource(doc, "x.yaml")
        assert any(p.startswith(f"{field}: must be a container image reference") for p in err.value.problems), \
            err.value.problems
        assert any(e.startswith(field) for e in _go_schema_errors(doc, kind)), bad


@pytest.mark.parametrize("good", ["synpo-workloads:test", "x", "localhost:5000/synpo/workloads:0.1.0-rc.1",
                                  "registry.example.com/team/synpo_workloads@sha256:" + "a" * 64,
                                  "Registry.Example:443/a__b/c-d--e:V1_2@sha512:" + "F" * 128])
def test_image_references_pass(good):
    for doc, kind, _ in _both(IMAGE, good):
        parse_resource(doc, "x.yaml")
        assert not _go_schema_errors(doc, kind)


@pytest.mark.parametrize("bad", ["High", "high priority", "-high", "high.", "a" * 254, "gpu_high", ""])
def test_priority_class_name_must_be_a_dns_subdomain(bad):
    path = ("spec", "resources", "priorityClassName")
    for doc, kind, field in _both(path, bad):
        with pytest.raises(SpecError) as err:
            parse_resource(doc, "x.yaml")
        assert any(p.startswith(f"{field}: ") for p in err.value.problems), err.value.problems
        assert any(e.startswith(field) for e in _go_schema_errors(doc, kind)), bad
    assert parse_resource(_with(path, "team-a.high"), "x.yaml").spec.resources.priority_class_name == "team-a.high"


def test_duplicate_env_names_are_refused_naming_them():
    env = [{"name": "HF_TOKEN", "value": "a"}, {"name": "B", "value": "b"},
           {"name": "HF_TOKEN", "secretKeyRef": {"name": "hf", "key": "token"}}]
    for doc, _, field in _both(("spec", "env"), env):
        with pytest.raises(SpecError) as err:
            parse_resource(doc, "x.yaml")
        assert any(p.startswith(f"{field}: ") and "repeated: HF_TOKEN" in p for p in err.value.problems), \
            err.value.problems
    # at apply time: a list keyed by name, so the API server answers "Duplicate value" for spec.env[2]
    for kind, spec in (("SynPORun", _run_schema()["properties"]["spec"]),
                       ("SynPOSchedule", next(c for c in crds() if c["spec"]["names"]["kind"] == "SynPOSchedule")[
                           "spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
                           "runTemplate"]["properties"]["spec"])):
        assert spec["properties"]["env"]["x-kubernetes-list-type"] == "map", kind
        assert spec["properties"]["env"]["x-kubernetes-list-map-keys"] == ["name"], kind
        assert "name" in spec["properties"]["env"]["items"]["required"], kind
    assert len(parse_resource(_with(("spec", "env"), env[:2]), "x.yaml").spec.env) == 2
