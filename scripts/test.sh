#!/usr/bin/env bash
# Run the whole test suite: unit, workloads (real tiny models) and integration (real Kubernetes control
# plane built from the Go module proxy on first use, then cached). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check operator workloads tests
.venv/bin/pytest "$@"
