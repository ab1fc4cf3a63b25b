"""`synpo plan` and `synpo crds`: good files plan, bad files get one clear message naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synpo_operator.cli import main

from .conftest import ROOT

QUICKSTART = (ROOT / "examples" / "quickstart.yaml").read_text()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synpo_operator.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


@pytest.mark.parametrize("example", ["quickstart.yaml", "cluster-llama3.yaml", "cluster-llama3-70b.yaml"])
def test_examples_plan(example):
    done = run_cli("plan", f"examples/{example}")
    assert done.returncode == 0, done.stderr
    assert "valid" in done.stdout and "i1-train" in done.stdout and "writes: <run>/iter-1/pairs" in done.stdout


def test_manifests_are_jobsets_only_for_training_on_several_nodes():
    """The 4-node example's training stages print as JobSets, everything else as Jobs; one node: only Jobs."""
    kinds = {}
    for example in ("cluster-llama3.yaml", "cluster-llama3-70b.yaml"):
        done = run_cli("plan", f"examples/{example}", "--manifests", "--all")
        assert done.returncode == 0, done.stderr
        docs = [d for d in yaml.safe_load_all(done.stdout) if d]
        kinds[example] = {(d["kind"], d["metadata"]["labels"]["synpo.dev/stage"]) for d in docs}
    assert {k for k, _ in kinds["cluster-llama3.yaml"]} == {"Job"}
    assert {s for k, s in kinds["cluster-llama3-70b.yaml"] if k == "JobSet"} == {"prompt-generator", "improver", "train"}
    assert {s for k, s in kinds["cluster-llama3-70b.yaml"] if k == "Job"} >= {"keywords", "prompts", "evaluate"}


def test_crds_command_equals_committed_files():
    done = run_cli("crds")
    assert done.returncode == 0
    committed = "---\n".join(p.read_text() for p in sorted((ROOT / "crds").glob("*.yaml")))
    assert done.stdout == committed


def _mutate(path: list, value) -> str:
    doc = yaml.safe_load(QUICKSTART)
    node = doc
    for key in path[:-1]:
        node = node.setdefault(key, {})
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return yaml.safe_dump(doc)


_DELETE = object()
SCHEDULE = yaml.safe_dump({"apiVersion": "synpo.dev/v1alpha1", "kind": "SynPOSchedule",
                           "metadata": {"name": "nightly"},
                           "spec": {"schedule": "every day", "runTemplate": yaml.safe_load(QUICKSTART)}})

BAD_INPUTS = {
    "malformed-yaml": ("spec:\n  model: {base: x\n  data: [", "malformed YAML at line"),
    "wrong-type": (_mutate(["spec", "iterations"], "four"), "spec.iterations: Input should be a valid integer"),
    "unknown-field": (_mutate(["spec", "generation", "engyne"], "vllm"),
                      "spec.generation.engyne: unknown field; allowed here: batchSize, engine"),
    "out-of-range": (_mutate(["spec", "generation", "temperature"], 7.5),
                     "spec.generation.temperature: Input should be less than or equal to 2"),
    "zero-iterations": (_mutate(["spec", "iterations"], 0), "spec.iterations: Input should be greater than"),
    "missing-section": (_mutate(["spec", "data"], _DELETE), "spec.data: required field is missing"),
    "missing-spec": ("apiVersion: synpo.dev/v1alpha1\nkind: SynPORun\nmetadata: {name: a}\n",
                     "spec: required field is missing"),
    "several-resources": (QUICKSTART + "\n---\n" + QUICKSTART, "expected exactly one resource"),
    "empty-file": ("", "found 0 YAML documents"),
    "wrong-kind": (QUICKSTART.replace("kind: SynPORun", "kind: Job"), "kind: must be one of SynPORun"),
    "wrong-api-version": (QUICKSTART.replace("synpo.dev/v1alpha1", "synpo.dev/v1"), "apiVersion: must be"),
    "bad-enum": (_mutate(["spec", "training", "loss"], "ppo"), "spec.training.loss: Input should be 'simpo' or"),
    "cross-field": (_mutate(["spec", "pairsPerIteration"], 1000), "pairsPerIteration must not exceed"),
    "both-storages": (_mutate(["spec", "storage", "volume"], {"claimName": "pvc"}),
                      "set exactly one of storage.volume or storage.uri"),
    "path-traversal": (_mutate(["spec", "storage", "uri"], "../../etc"), "spec.storage.uri: must not contain"),
    "bad-name": (_mutate(["metadata", "name"], "Quick_Start"), "metadata.name: String should match pattern"),
    "long-name": (_mutate(["metadata", "name"], "a" * 41), "metadata.name: String should have at most 40"),
    "list-at-top": ("- a\n- b\n", "expected a mapping"),
    "bad-cron": (SCHEDULE, "spec.schedule"),
    # batch sizes are global, split across nodes x gpusPerNode training processes (quickstart: 8, 8, 4)
    "global-batch": (_mutate(["spec", "resources", "training"], {"nodes": 3}),
                     "spec.training.batchSize: the global batch of 4 is split evenly across the 3 training "
                     "processes"),
    "env-two-sources": (_mutate(["spec", "env"], [{"name": "A", "value": "1", "secretKeyRef": {"name": "s",
                                                                                              "key": "k"}}]),
                        "spec.env[0]: set exactly one of value or secretKeyRef"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_names_the_field(name, tmp_path: Path, capsys):
    text, expected = BAD_INPUTS[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert err.startswith(f"error: {path} is not a valid SynPO resource:")
    assert len(err.splitlines()) <= 22, "one screen at most"


def test_missing_and_binary_files(tmp_path: Path, capsys):
    assert main(["plan", str(tmp_path / "nope.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert main(["plan", str(binary)]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_bad_input_never_prints_a_traceback(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_INPUTS["unknown-field"][0])
    done = run_cli("plan", str(path))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "unknown field" in done.stderr
