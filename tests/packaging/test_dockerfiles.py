"""Static checks of docker/*.Dockerfile (no image is built here: see scripts/build-images.sh and
docs/install.md for building, with or without a Docker engine)."""

from __future__ import annotations

import re
import tomllib

import pytest
from chart_helpers import ROOT

DOCKER = ROOT / "docker"


def instructions(name: str) -> list[tuple[str, str]]:
    text = (DOCKER / name).read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def build_args(ins: list[tuple[str, str]]) -> dict[str, str]:
    return dict(rest.split("=", 1) for op, rest in ins if op == "ARG" and "=" in rest)


@pytest.mark.parametrize("name", ["operator.Dockerfile", "workloads.Dockerfile"])
def test_runs_as_uid_1000_and_pins_its_base_image(name):
    ins = instructions(name)
    users = [rest for op, rest in ins if op == "USER"]
    assert users and users[-1] == "1000:1000", "the final stage must run as uid/gid 1000 (numeric, for runAsNonRoot)"
    args = build_args(ins)
    for op, rest in ins:
        if op == "FROM":
            ref = rest.split()[0]
            ref = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], ref)
            if ref in ("build",):
                continue
            repo, _, tag = ref.rpartition(":")
            assert repo and tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"unpinned base image {ref}"
    assert (DOCKER / f"{name}.dockerignore").is_file()


def test_operator_image_installs_only_the_operator_extra_with_exact_pins():
    ins = instructions("operator.Dockerfile")
    installs = [rest for op, rest in ins if op == "RUN" and "pip install" in rest]
    extras = {e for rest in installs for group in re.findall(r"\.whl\)?\"?\[([\w,-]+)\]", rest)
              for e in group.split(",")}
    assert extras == {"operator"}, f"the operator image installs extras {extras}: only [operator]"
    assert not any("vllm" in rest.lower() or "torch" in rest for rest in installs)
    assert ("ENTRYPOINT", '["synpo"]') in ins  # the chart passes `operator --executor jobs ...` as args
    pins = {}
    for line in (DOCKER / "operator-constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pins[name.lower()] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in project["dependencies"] + project["optional-dependencies"]["operator"]:
        name = re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower()
        assert name in pins, f"{name} (from pyproject.toml) has no pin in docker/operator-constraints.txt"


def test_workloads_image_runs_the_stage_programs_as_the_operator_starts_them():
    from synpo_operator.executors import manifests

    text = (DOCKER / "workloads.Dockerfile").read_text()
    assert '".[workloads,vllm]"' in text
    ins = instructions("workloads.Dockerfile")
    assert ("ENTRYPOINT", '["python", "-m", "synpo_workloads"]') in ins
    env = " ".join(rest for op, rest in ins if op == "ENV")
    assert "PATH=/opt/synpo/bin:" in env  # `python` in the Job's command is the venv's
    assert f"HF_HOME={manifests.CACHE_DIR}/huggingface" in env
    assert f"SYNPO_CACHE={manifests.CACHE_DIR}/synpo" in env  # fetched models: on the shared cache volume
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    workloads = {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0] for r in project["optional-dependencies"]["workloads"]}
    assert {"s3fs", "gcsfs", "adlfs"} <= workloads  # s3://, gs://, az:// storage, data and models
    assert "s3fs, gcsfs, adlfs" in text  # and the image build imports them
    assert manifests.UID == 1000
