"""API models: defaults are the paper's, bounds and cross-field rules hold, CRDs match the models."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from synpo_operator.api import SynPORun, SynPORunSpec, SynPOSchedule
from synpo_operator.api.crd import crd_files, crds, openapi_schema

from .conftest import ROOT, with_changes


def test_paper_defaults():
    s = SynPORunSpec.model_validate({
        "model": {"base": "m"}, "data": {"seed": "a", "corpus": "b", "eval": "c"}, "storage": {"uri": "/r"}})
    assert (s.iterations, s.prompts_per_iteration, s.pairs_per_iteration) == (4, 50_000, 10_000)
    assert s.generation.temperature == 0.7 and s.generation.max_new_tokens == 2048
    assert (s.prompt_generator.learning_rate, s.prompt_generator.batch_size, s.prompt_generator.epochs,
            s.prompt_generator.max_length, s.prompt_generator.warmup_ratio) == (1e-6, 32, 3, 8000, 0.1)
    assert s.improver.max_length == 6000
    assert (s.prompt_generator.keywords_per_prompt, s.prompt_generator.noise_keywords) == (3, 1)
    assert (s.training.loss, s.training.gamma, s.training.learning_rate, s.training.batch_size) == (
        "simpo", 1.6, 6e-7, 128)
    assert (s.filter.min_margin, s.filter.max_repetition) == (0.02, 0.5)


def test_examples_parse_and_round_trip(quickstart_doc, cluster_doc):
    for doc in (quickstart_doc, cluster_doc):
        run = SynPORun.model_validate(doc)
        assert SynPORun.model_validate(run.to_api()) == run
    assert SynPORun.model_validate(cluster_doc).spec.env[0].secret_key_ref.name == "hf-token"


@pytest.mark.parametrize("changes, fragment", [
    ({"iterations": 0}, "iterations"),
    ({"pairsPerIteration": 100}, "pairsPerIteration must not exceed promptsPerIteration"),
    ({"storage": {"uri": "/a", "volume": {"claimName": "pvc"}}}, "exactly one of storage.volume or storage.uri"),
    ({"storage": {"uri": "/data/../../etc"}}, "must not contain '..'"),
    ({"storage": {"volume": {"claimName": "pvc", "subPath": "/abs"}}}, "subPath"),
    ({"env": [{"name": "X", "value": "v", "secretKeyRef": {"name": "s", "key": "k"}}]}, "exactly one of value"),
    ({"filter": {"scorer": {"type": "rewardModel"}}}, "needs model"),
    ({"generation": {"engine": "tgi"}}, "engine"),
])
def test_invalid_specs_are_rejected(quickstart_doc, changes, fragment):
    with pytest.raises(ValidationError) as err:
        SynPORun.model_validate(with_changes(quickstart_doc, **changes))
    assert fragment in str(err.value)


def test_committed_crds_equal_generated():
    for name, text in crd_files().items():
        assert (ROOT / "crds" / name).read_text() == text, f"crds/{name} drifted: run `make crds`"
    assert sorted(p.name for p in (ROOT / "crds").glob("*.yaml")) == sorted(crd_files())


def _walk(node, path="schema"):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("model", [SynPORun, SynPOSchedule])
def test_schemas_are_structural_and_bounded(model):
    for path, node in _walk(openapi_schema(model)):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert not {"$ref", "anyOf", "oneOf", "allOf", "const", "title"} & set(node), path
        if node.get("type") == "string" and "enum" not in node and not path.startswith("schema.status") \
                and not path.endswith(("apiVersion", "kind")):
            assert "maxLength" in node, f"{path}: unbounded string"
        if node.get("type") == "array" and path.startswith("schema.spec"):
            assert "maxItems" in node, f"{path}: unbounded list"
        if not path.endswith("]") and path != "schema":
            assert node.get("description") or path.endswith((".metadata", ".apiVersion", ".kind")) or \
                path.endswith("{}"), f"{path} is undocumented"


def test_crds_have_status_printer_columns_short_names_and_cel():
    run, schedule = crds()
    version = run["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase", "Iteration", "Stage", "WinRate", "Against", "N", "Report", "Age"]
    # a win rate is never shown without its opponent; -o wide adds its n and the report's URI
    wide = {c["name"]: c for c in version["additionalPrinterColumns"] if c.get("priority")}
    assert set(wide) == {"N", "Report"} and wide["Report"]["jsonPath"] == ".status.report"
    assert run["spec"]["names"]["shortNames"] == ["spr"]
    assert schedule["spec"]["names"]["shortNames"] == ["sps"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert "self.pairsPerIteration <= self.promptsPerIteration" in rules
    for immutable in ("model", "data", "storage"):
        assert "self == oldSelf" in [r["rule"] for r in spec["properties"][immutable]["x-kubernetes-validations"]]
    # The type's own rules survive next to the field's (exactly one storage kind).
    assert "has(self.volume) != has(self.uri)" in [
        r["rule"] for r in spec["properties"]["storage"]["x-kubernetes-validations"]]
    # A schedule's run template stays editable: no transition rules inside it.
    assert "oldSelf" not in yaml.safe_dump(schedule["spec"]["versions"][0]["schema"])
    assert spec["properties"]["generation"]["default"] == {}


def _without_k8s_extensions(node):
    if isinstance(node, dict):
        return {k: _without_k8s_extensions(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    return node


@pytest.mark.parametrize("example", ["quickstart.yaml", "cluster-llama3.yaml"])
def test_examples_validate_against_the_generated_schema(example):
    schema = _without_k8s_extensions(openapi_schema(SynPORun))
    jsonschema.Draft4Validator(schema).validate(yaml.safe_load((ROOT / "examples" / example).read_text()))


def test_schema_rejects_what_the_models_reject(quickstart_doc):
    schema = _without_k8s_extensions(openapi_schema(SynPORun))
    bad = with_changes(quickstart_doc, generation={"temperature": 3.0})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema).validate(bad)


def test_schedule_model(tmp_path: Path, quickstart_doc):
    doc = {"apiVersion": "synpo.dev/v1alpha1", "kind": "SynPOSchedule", "metadata": {"name": "weekly"},
           "spec": {"schedule": "0 2 * * 0", "timeZone": "Europe/Berlin",
                    "runTemplate": {"spec": quickstart_doc["spec"]}}}
    sched = SynPOSchedule.model_validate(doc)
    assert sched.spec.concurrency_policy == "Forbid" and sched.spec.promotion.enabled
    doc["spec"]["schedule"] = "61 * * * *"
    with pytest.raises(ValidationError, match="cron"):
        SynPOSchedule.model_validate(doc)


def test_crd_yaml_has_no_bare_yaml11_booleans():
    """kubectl and Go's yaml.v2 read a bare `n`/`y` as a boolean (YAML 1.1): the API server then refuses the CRD
    (`required` holds a bool). PyYAML writes them bare unless told; the generated files quote them."""
    import re

    bare = re.compile(r"^\s*(- )?[yYnN]:?\s*$", re.M)
    for name, text in crd_files().items():
        assert not bare.search(text), name
        assert "'n':" in text or name.startswith("synposchedules")
