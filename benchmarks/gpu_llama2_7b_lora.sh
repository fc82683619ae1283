#!/usr/bin/env bash
# Prepared GPU benchmark: Llama2-7B shape (random weights, no download), LoRA, bf16, sequence length 512, batch 1,
# on one NVIDIA GPU; the paper's A100 comparison (+79% at drop rate 0.875). Runs in well under 8 minutes on an
# A100/H100/H200. Uses the python3 that already holds torch, transformers and peft (no install, no network): the
# four layers are put on the path under their `dropbp.*` names through symbolic links in a temporary folder.
#   bash benchmarks/gpu_llama2_7b_lora.sh [OUT_DIR]      # default OUT_DIR: benchmarks/results/cuda
set -euo pipefail
source "$(dirname "$0")/source_tree.sh"
OUT=${1:-benchmarks/results/cuda}
$PY -m dropbp.recipes env
common=(--device cuda --model llama2-7b --method lora --precision bf16 --seq-len 512 --batch-size 1
        --drop-rates 0.5,0.75,0.875 --warmup 3 --steps 20 --quiet)
# bernoulli: the paper's sampler; pool: exact rates over every 8 steps and at most 8 distinct graphs
$PY -m dropbp.benchmarks throughput "${common[@]}" --sampler bernoulli --out "$OUT/llama2-7b-lora-bernoulli"
$PY -m dropbp.benchmarks throughput "${common[@]}" --sampler pool --out "$OUT/llama2-7b-lora-pool"
