"""Shared helpers for the packaging tests (Helm chart, Argo CD health checks) and tests/integration/test_helm_install.py.

tests/packaging deliberately has no __init__.py: as a package it would be imported under the name `packaging`
and shadow the PyPI `packaging` library for the whole pytest session (transformers, setuptools import it).
Test modules here import this file as `chart_helpers` (pytest puts this directory on sys.path).

The helm and kubectl binaries come from `bash scripts/install-kube-tools.sh` (~/.cache/synpo/bin, or
$SYNPO_TOOLS_BIN). A missing binary is a test failure, not a skip, so that CI cannot pass without running
the chart tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "synpo-operator"
INSTALL_HINT = "run `bash scripts/install-kube-tools.sh` (installs helm and kubectl into ~/.cache/synpo/bin)"


def tool(name: str) -> str:
    """Path of a kube tool: $SYNPO_TOOLS_BIN, then ~/.cache/synpo/bin, then PATH; fails the test if absent."""
    candidates = []
    if os.environ.get("SYNPO_TOOLS_BIN"):
        candidates.append(Path(os.environ["SYNPO_TOOLS_BIN"]) / name)
    candidates.append(Path.home() / ".cache" / "synpo" / "bin" / name)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(f"{name} not found: {INSTALL_HINT}")


def run_helm(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # keep helm away from the user's real config, caches and kube context
    env.setdefault("HELM_CACHE_HOME", "/tmp/synpo-helm/cache")
    env.setdefault("HELM_CONFIG_HOME", "/tmp/synpo-helm/config")
    env.setdefault("HELM_DATA_HOME", "/tmp/synpo-helm/data")
    proc = subprocess.run([helm, *args], capture_output=True, text=True, env=env, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def set_args(values: dict | None) -> list[str]:
    """Values as a temporary-file-free `--set-json` list (one per top-level key)."""
    import json

    return [a for k, v in (values or {}).items() for a in ("--set-json", f"{k}={json.dumps(v)}")]


def render(helm: str, values: dict | None = None, *, namespace: str = "synpo-system", release: str = "synpo",
           include_crds: bool = False) -> list[dict]:
    args = ["template", release, str(CHART), "--namespace", namespace, *set_args(values)]
    if include_crds:
        args.append("--include-crds")
    out = run_helm(helm, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]
