#!/usr/bin/env bash
# Run the whole test suite: lint, unit, workloads (real tiny models) and integration (a real Kubernetes
# control plane, built from the Go module proxy on first use and cached). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Integration tests fail (instead of skipping) when the control plane cannot be built or started.
export SYNPO_REQUIRE_DEV_CLUSTER="${SYNPO_REQUIRE_DEV_CLUSTER:-1}"
.venv/bin/ruff check operator workloads tests
bash scripts/install-kube-tools.sh >/dev/null
.venv/bin/synpo dev-cluster build   # cold: ~10 min on 2 cores; cached afterwards
.venv/bin/pytest "$@"
