#!/usr/bin/env bash
# The GPU figures of issue #7 in one short run (about 6 minutes on an H100/H200): generation (plain generate vs
# the engine, batch 64/256/1024, 2 batches each, 256 new tokens) and training (TRL defaults vs the train stage).
# Needs torch with CUDA and transformers/trl (pip install -e '.[workloads]'); results land in $OUT (default .).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-.}
py=${PYTHON:-python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
timeout 330 "$py" bench/generation.py --device cuda --batches 2 --new-tokens 256 --batch-sizes 64,256,1024 \
    --warmup --engines generate,engine-generate,static --json "$out/gen-gpu.json" 2>&1 | tee "$out/gen-gpu.log"
timeout 200 "$py" bench/training.py --device cuda --pairs 1024 --batch-size 128 --micro-batch 8 \
    --json "$out/train-gpu.json" 2>&1 | tee "$out/train-gpu.log"
