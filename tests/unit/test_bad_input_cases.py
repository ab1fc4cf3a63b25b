"""Bad input a new user runs into (issue 16): each is refused with a message naming the field, by the models
(`synpo plan`, `synpo run`, the operator) and by the CRD schema the API server applies, never a traceback."""

from __future__ import annotations

import copy

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
