"""Reading the user's data files: `builtin:NAME` (shipped in synpo_workloads/data), local paths, fsspec URIs.

User data is untrusted: every problem becomes a DataError naming the file, line and column, which the stage
runner turns into exit code 2 with that one line — never a traceback, and nothing already computed is touched
(stages read all their inputs before writing anything).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from importlib import resources
from typing import Any

from . import store
from .errors import DataError

DEFAULT_MAX_LINE_BYTES = 1 << 20
"""Longest accepted JSONL line (1 MiB); override with env SYNPO_MAX_LINE_BYTES."""

REQUIRED_COLUMNS = {
    "seed": ("prompt", "response"),
    "corpus": ("text",),
    "eval": ("prompt",),
}
"""Columns each data role must have (string values), from api/run.py DataSpec."""


def max_line_bytes() -> int:
    try:
        return int(os.environ.get("SYNPO_MAX_LINE_BYTES", DEFAULT_MAX_LINE_BYTES))
    except ValueError:
        return DEFAULT_MAX_LINE_BYTES


def resolve(ref: str) -> str:
    """The readable location of a data reference."""
    if ref.startswith("builtin:"):
        name = ref.split(":", 1)[1]
        if not name.endswith(".jsonl"):
            name += ".jsonl"
        path = resources.files("synpo_workloads") / "data" / name
        if not path.is_file():
            raise DataError(f"{ref}: no builtin data file named {name!r}")
        return str(path)
    return ref


def _read_raw(ref: str) -> bytes:
    path = resolve(ref)
    try:
        return store.read_bytes(path)
    except FileNotFoundError as e:
        raise DataError(f"{ref}: file not found") from e
    except IsADirectoryError as e:
        raise DataError(f"{ref}: is a directory, expected a JSONL file") from e
    except OSError as e:
        raise DataError(f"{ref}: cannot read ({e.strerror or e})") from e


def parse_jsonl(raw: bytes, name: str, required: Iterable[str] = (), limit: int | None = None) -> list[dict]:
    """Parse JSONL bytes strictly. Pure: `name` only labels the messages."""
    limit = limit or max_line_bytes()
    required = tuple(required)
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if len(line) > limit:
            raise DataError(f"{name}:{lineno}: line is {len(line)} bytes, over the {limit}-byte limit "
                            f"(SYNPO_MAX_LINE_BYTES)")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{name}:{lineno}:{e.start + 1}: not valid UTF-8 (byte 0x{line[e.start]:02x})") from e
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{name}:{lineno}:{e.colno}: malformed JSON: {e.msg}") from e
        if not isinstance(row, dict):
            raise DataError(f"{name}:{lineno}: expected a JSON object, got {type(row).__name__}")
        for column in required:
            if column not in row:
                raise DataError(f"{name}:{lineno}: missing column {column!r} (required: {', '.join(required)})")
            if not isinstance(row[column], str) or not row[column].strip():
                raise DataError(f"{name}:{lineno}: column {column!r} must be a non-empty string")
        rows.append(row)
    if not rows:
        raise DataError(f"{name}: empty (no JSONL rows)")
    return rows


def read_jsonl(ref: str, role: str | None = None, required: Iterable[str] | None = None) -> list[dict]:
    """All rows of a data file, validated for the role's required columns."""
    columns = tuple(required) if required is not None else REQUIRED_COLUMNS.get(role or "", ())
    return parse_jsonl(_read_raw(ref), ref, columns)
