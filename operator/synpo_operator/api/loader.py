"""Reading run and schedule files, with errors that name the field and say what is allowed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .common import API_VERSION
from .run import SynPORun
from .schedule import SynPOSchedule

KINDS: dict[str, type[SynPORun] | type[SynPOSchedule]] = {"SynPORun": SynPORun, "SynPOSchedule": SynPOSchedule}


class SpecError(ValueError):
    """A resource that cannot be used; `problems` are one-line messages, each naming a field."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def render(self) -> str:
        lines = [f"error: {self.source} is not a valid SynPO resource:"]
        lines += [f"  - {p}" for p in self.problems[:20]]
        if len(self.problems) > 20:
            lines.append(f"  … and {len(self.problems) - 20} more")
        return "\n".join(lines)


def _allowed_fields(model: type, loc: tuple[Any, ...]) -> list[str]:
    """The camelCase field names accepted at `loc` (the parent of an unknown field)."""
    from pydantic import BaseModel

    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        fields = {(f.alias or n): f for n, f in current.model_fields.items()}
        field = fields.get(part)
        if field is None:
            return []
        current = _model_in(field.annotation, BaseModel)
    return sorted((f.alias or n) for n, f in current.model_fields.items()) if current else []


def _model_in(annotation: Any, base: type) -> type | None:
    """The pydantic model inside an annotation such as `X | None` or `list[X]`."""
    if isinstance(annotation, type) and issubclass(annotation, base):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg, base)
        if found:
            return found
    return None


def _segment(part: Any) -> str:
    if isinstance(part, int):
        return f"[{part}]"
    text = str(part)
    return text if re.fullmatch(r"[A-Za-z0-9_.-]+", text) else repr(text)  # make odd keys visible


def _describe(model: type, error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    if len(loc) >= 2 and loc[-1] == "[key]":  # a map key itself is wrong: name the map, then the key
        path = ".".join(_segment(p) for p in loc[:-2]).replace(".[", "[")
        message = error["msg"].removeprefix("Value error, ")
        return f"{path}: key {loc[-2]!r} {message}"
    path = ".".join(_segment(p) for p in loc).replace(".[", "[")
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_fields(model, loc[:-1])
        hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
        return f"{path}: unknown field{hint}"
    if kind == "missing":
        return f"{path}: required field is missing"
    message = error["msg"].removeprefix("Value error, ")
    given = error.get("input")
    if kind not in ("model_type", "dict_type") and isinstance(given, (str, int, float, bool)):
        message += f" (got {given!r})"
    return f"{path or '(top level)'}: {message}"


def parse_resource(doc: Any, source: str = "<input>") -> SynPORun | SynPOSchedule:
    """Validate one decoded document as a SynPORun or SynPOSchedule."""
    if not isinstance(doc, dict):
        raise SpecError(source, [f"(top level): expected a mapping with apiVersion, kind, metadata and spec, "
                                 f"got {type(doc).__name__}"])
    kind = doc.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise SpecError(source, [f"kind: must be one of {', '.join(KINDS)} (got {kind!r})"])
    if doc.get("apiVersion") != API_VERSION:
        raise SpecError(source, [f"apiVersion: must be {API_VERSION} (got {doc.get('apiVersion')!r})"])
    model = KINDS[kind]
    try:
        return model.model_validate(doc)
    except ValidationError as err:
        raise SpecError(source, [_describe(model, e) for e in err.errors()]) from None


MAX_DEPTH = 64
"""Deepest nesting of mappings and lists accepted (a SynPORun needs 6): PyYAML builds documents recursively,
so a file nested thousands of levels deep would end in a RecursionError."""


def _check_depth(text: str, source: str) -> None:
    """Walk the YAML events (iteratively: no recursion) and refuse a document nested deeper than MAX_DEPTH."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise SpecError(source, [f"malformed YAML at line {mark.line + 1}, column {mark.column + 1}: "
                                         f"nested more than {MAX_DEPTH} levels deep"])
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def load_documents(text: str, source: str = "<input>") -> list[Any]:
    """Decode a YAML stream; syntax errors become a SpecError with line and column."""
    try:
        _check_depth(text, source)
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError(source, [f"malformed YAML at {where}{problem}"]) from None
    return docs


def load_file(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SynPORun | SynPOSchedule:
    """Read a file holding exactly one SynPORun or SynPOSchedule; `overrides` (`a.b.c=VALUE`, VALUE in YAML)
    replace fields of the document before it is validated (`synpo run --set`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(path), ["file not found"]) from None
    except UnicodeDecodeError:
        raise SpecError(str(path), ["not UTF-8 text"]) from None
    except OSError as err:
        raise SpecError(str(path), [f"cannot read: {err.strerror}"]) from None
    docs = load_documents(text, str(path))
    if len(docs) != 1:
        raise SpecError(str(path), [f"expected exactly one resource (a SynPORun or SynPOSchedule), "
                                    f"found {len(docs)} YAML documents"])
    return parse_resource(apply_overrides(docs[0], overrides, str(path)), str(path))



def apply_overrides(doc: Any, overrides: list[str] | tuple[str, ...], source: str = "<input>") -> Any:
    """`spec.generation.engine=vllm`: set a dotted path (camelCase, as in the YAML) to a YAML value."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise SpecError(source, [f"--set {item!r}: expected FIELD.PATH=VALUE, e.g. spec.generation.engine=vllm"])
        node = doc
        for part in parts[:-1]:
            if not isinstance(node, dict):
                raise SpecError(source, [f"--set {key}: {part} is inside a value that is not a mapping"])
            node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpecError(source, [f"--set {key}: the parent of {parts[-1]} is not a mapping"])
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return doc
