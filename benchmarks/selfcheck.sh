#!/usr/bin/env bash
# The device self-check from a source tree, with no install (dropbp selfcheck where dropbp is installed): the
# engine's gradients on the device against the CPU (fp32, bf16), the paper's throughput shape (Llama2-7B, LoRA,
# bf16, seq 512) at p = 0, 0.5, 0.75, 0.875 with both samplers and peak memory, and the pool sampler's graph count.
# Under 8 minutes on one A100/H100/H200 or Gaudi2.
#   bash benchmarks/selfcheck.sh cuda [OUT_DIR]      # default OUT_DIR: benchmarks/results/<device>
#   bash benchmarks/selfcheck.sh hpu
set -euo pipefail
DEVICE=${1:?give the device: cuda, hpu or cpu}
source "$(dirname "$0")/source_tree.sh"
OUT=${2:-benchmarks/results/$DEVICE}
$PY -m dropbp.recipes env
$PY -m dropbp.benchmarks selfcheck --device "$DEVICE" --out "$OUT" --quiet
