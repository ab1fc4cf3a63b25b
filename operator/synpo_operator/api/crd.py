"""CustomResourceDefinitions generated from the pydantic models (the single source of truth).

Pydantic's JSON Schema is turned into a Kubernetes structural schema: references inlined, optionals
unwrapped, constants turned into enums, JSON-Schema-2020 bounds turned into OpenAPI v3.0 ones, and the
`x-kubernetes-validations` (CEL) rules declared on the models kept.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from .common import GROUP, VERSION
from .run import SynPORun
from .schedule import SynPOSchedule

_KEEP = {
    "type", "description", "default", "enum", "pattern", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems", "maxProperties", "required",
    "properties", "items", "additionalProperties", "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields", "nullable",
}


_RULES = "x-kubernetes-validations"


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline every $ref (the models have no recursive types)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = dict(defs[node["$ref"].rsplit("/", 1)[-1]])
            extra = {k: v for k, v in node.items() if k != "$ref"}
            # Rules declared on the field add to the rules of its type instead of replacing them.
            rules = target.get(_RULES, []) + extra.get(_RULES, [])
            merged = {**target, **extra, **({_RULES: rules} if rules else {})}
            return _resolve(merged, defs)
        return {k: _resolve(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    """Convert one resolved JSON-Schema node into a structural OpenAPI v3.0 node."""
    node = dict(node)
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) == 1:
            merged = {**options[0], **{k: v for k, v in node.items() if k != "default" or v is not None}}
            return _structural(merged)
        # Mixed scalars (e.g. stage results): keep whatever the operator writes.
        return {k: v for k, v in {"description": node.get("description"),
                                  "x-kubernetes-preserve-unknown-fields": True}.items() if v is not None}
    if "const" in node:
        node["enum"] = [node.pop("const")]
        node.setdefault("type", "string")
    if node.get("default", 0) is None:
        del node["default"]
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), (int, float)) and not isinstance(node.get(bound), bool):
            node[flag] = node.pop(bound)
            node[bound] = True
    if node.get("type") == "object":
        props = node.get("properties")
        if props:
            node["properties"] = {name: _structural(sub) for name, sub in props.items()}
            # Unknown fields are pruned (and rejected by kubectl's strict validation): no additionalProperties.
            node.pop("additionalProperties", None)
        elif isinstance(node.get("additionalProperties"), dict):
            node["additionalProperties"] = _structural(node["additionalProperties"])
        else:
            node.pop("additionalProperties", None)
            node.setdefault("x-kubernetes-preserve-unknown-fields", True)
    if node.get("type") == "array" and "items" in node:
        node["items"] = _structural(node["items"])
    if node.get("required") == []:
        del node["required"]
    return {k: v for k, v in node.items() if k in _KEEP}


def _default_nested_objects(node: dict[str, Any], model: type[BaseModel] | None) -> None:
    """Give object fields that default to a fresh model `default: {}`, so the API server fills their defaults."""
    for name, field in (model.model_fields.items() if model else []):
        alias = field.alias or name
        sub = node.get("properties", {}).get(alias)
        annotation = field.annotation
        if sub is None or not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            continue
        if field.default_factory is annotation and sub.get("type") == "object":
            sub["default"] = {}
        _default_nested_objects(sub, annotation)


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural openAPIV3Schema of a top-level resource model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = _structural(_resolve({k: v for k, v in raw.items() if k != "$defs"}, raw.get("$defs", {})))
    props = schema["properties"]
    props["apiVersion"] = {"type": "string", "description": "API version: synpo.dev/v1alpha1."}
    props["kind"] = {"type": "string", "description": "Resource kind."}
    props["metadata"] = {"type": "object"}
    schema["required"] = ["spec"]
    _default_nested_objects(props["spec"], model.model_fields["spec"].annotation)
    template = props["spec"]["properties"].get("runTemplate")
    if template:
        props["spec"]["properties"]["runTemplate"] = _without_transition_rules(template)
    return schema


def _without_transition_rules(node: Any) -> Any:
    """Drop `oldSelf` rules: a run's immutable fields stay editable in a schedule's run template."""
    if isinstance(node, dict):
        out = {k: _without_transition_rules(v) for k, v in node.items() if k != _RULES}
        kept = [r for r in node.get(_RULES, []) if "oldSelf" not in r["rule"]]
        return {**out, _RULES: kept} if kept else out
    if isinstance(node, list):
        return [_without_transition_rules(v) for v in node]
    return node


def _crd(model: type[BaseModel], kind: str, plural: str, short: list[str],
         columns: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "synpo"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
                      "shortNames": short, "categories": ["synpo", "all"]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns + [
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
                "schema": {"openAPIV3Schema": openapi_schema(model)},
            }],
        },
    }


def crds() -> list[dict[str, Any]]:
    """Both CRDs, as dicts."""
    return [
        _crd(SynPORun, "SynPORun", "synporuns", ["spr"], [
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Iteration", "type": "integer", "jsonPath": ".status.iteration"},
            {"name": "Stage", "type": "string", "jsonPath": ".status.stage"},
            {"name": "WinRate", "type": "number", "jsonPath": ".status.latestWinRate"},
            {"name": "Against", "type": "string", "jsonPath": ".status.latestWinRateAgainst"},
            {"name": "N", "type": "integer", "jsonPath": ".status.latestWinRateN", "priority": 1},
            {"name": "Report", "type": "string", "jsonPath": ".status.report", "priority": 1},
        ]),
        _crd(SynPOSchedule, "SynPOSchedule", "synposchedules", ["sps"], [
            {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"},
            {"name": "Suspend", "type": "boolean", "jsonPath": ".spec.suspend"},
            {"name": "LastSchedule", "type": "date", "jsonPath": ".status.lastScheduleTime"},
            {"name": "Promoted", "type": "string", "jsonPath": ".status.promoted.run"},
        ]),
    ]


class KubeDumper(yaml.SafeDumper):
    """Quotes the strings YAML 1.1 readers (kubectl, Go's yaml.v2) take for booleans and PyYAML does not:
    `y`, `n` — e.g. the property name `n` (a win rate's sample size) in a `required` list. Use it for every
    YAML that goes to kubectl or helm."""


KubeDumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
    "tag:yaml.org,2002:str", value, style="'" if value.lower() in ("y", "n") else None))


def crd_files() -> dict[str, str]:
    """File name → YAML text, as committed under crds/."""
    header = "# Generated by `synpo crds` from synpo_operator.api; do not edit.\n"
    return {f"{c['spec']['names']['plural']}.{GROUP}.yaml":
            header + yaml.dump(c, Dumper=KubeDumper, sort_keys=False, width=110) for c in crds()}


def render_all() -> str:
    """All CRDs as one multi-document YAML stream."""
    return "---\n".join(crd_files().values())
