"""One image name: the default workloads image of a run is the one scripts/build-images.sh builds and pushes by
default, and the one the chart documents (issue: a run with defaults pulled an image the project never built)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from synpo_operator.api.run import DEFAULT_IMAGE, ResourcesSpec

ROOT = Path(__file__).resolve().parents[2]


def _built_image(name: str) -> str:
    """`$REGISTRY/<name>:$TAG` as build-images.sh computes it with no REGISTRY or TAG in the environment."""
    script = (ROOT / "scripts/build-images.sh").read_text()
    registry = re.search(r'^REGISTRY="\$\{REGISTRY:-([^}]+)\}"$', script, re.M)
    assert registry, "build-images.sh no longer sets REGISTRY=${REGISTRY:-...}: update this test"
    assert re.search(r'^TAG="\$\{TAG:-\$\(sed .*pyproject\.toml', script, re.M), \
        "build-images.sh no longer takes its default TAG from pyproject.toml: update this test"
    assert f"build {name} docker/" in script
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return f"{registry.group(1)}/{name}:{version}"


def test_default_image_is_the_one_built():
    assert ResourcesSpec().image == DEFAULT_IMAGE == _built_image("synpo-workloads")


def test_chart_documents_the_default_image_and_its_version():
    chart = yaml.safe_load((ROOT / "helm/synpo-operator/Chart.yaml").read_text())
    assert DEFAULT_IMAGE.endswith(f":{chart['appVersion']}")
    values = (ROOT / "helm/synpo-operator/values.yaml").read_text()
    assert DEFAULT_IMAGE in values
    # and the operator image the chart pulls is built by the same script, under the same registry
    repository = yaml.safe_load(values)["image"]["repository"]
    assert f"{repository}:{chart['appVersion']}" == _built_image("synpo-operator")


def test_crds_carry_the_default_image():
    for path in ("crds/synporuns.synpo.dev.yaml", "helm/synpo-operator/crds/synporuns.synpo.dev.yaml"):
        assert f"default: {DEFAULT_IMAGE}" in (ROOT / path).read_text(), path
