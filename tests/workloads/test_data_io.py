"""Reading user data: builtin files, and clear DataErrors for bad files."""

from __future__ import annotations

import pytest

from synpo_workloads import data_io
from synpo_workloads.errors import DataError

pytestmark = pytest.mark.workloads


def test_builtin_files_load_with_their_columns():
    assert len(data_io.read_jsonl("builtin:seed.jsonl", "seed")) > 20
    assert len(data_io.read_jsonl("builtin:corpus", "corpus")) > 20
    assert all("prompt" in r for r in data_io.read_jsonl("builtin:eval.jsonl", "eval"))
    with pytest.raises(DataError, match="no builtin data file"):
        data_io.read_jsonl("builtin:nope.jsonl")


@pytest.mark.parametrize("content, message", [
    (b"", r"bad\.jsonl: empty"),
    (b"\n  \n", r"bad\.jsonl: empty"),
    (b'{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": }\n', r"bad\.jsonl:2:\d+: malformed JSON"),
    (b'{"prompt": "a"}\n', r"bad\.jsonl:1: missing column 'response'"),
    (b'{"prompt": "a", "response": 3}\n', r"bad\.jsonl:1: column 'response' must be a non-empty string"),
    (b'["prompt"]\n', r"bad\.jsonl:1: expected a JSON object"),
    (b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "b"}\n', r"bad\.jsonl:2:\d+: not valid UTF-8"),
])
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        data_io.read_jsonl(str(path), "seed")


def test_huge_line_and_missing_file(tmp_path, monkeypatch):
    path = tmp_path / "big.jsonl"
    path.write_text('{"prompt": "' + "x" * 5000 + '", "response": "y"}\n')
    monkeypatch.setenv("SYNPO_MAX_LINE_BYTES", "1000")
    with pytest.raises(DataError, match=r"big\.jsonl:1: line is \d+ bytes, over the 1000-byte limit"):
        data_io.read_jsonl(str(path), "seed")
    with pytest.raises(DataError, match="file not found"):
        data_io.read_jsonl(str(tmp_path / "missing.jsonl"), "seed")
