#!/usr/bin/env bash
# Headline numbers on one H100/H200: seconds per 1024x1024 image (50 steps, CFG 5, bf16: eager, compiled, cached),
# peak GPU memory (plain, model CPU offload, group offload), chat tokens/s and the denoising loop's share of the bf16
# peak. Extra arguments go to bench_gpu.py (e.g. `--device cpu --tiny` for a smoke run).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/bench_gpu.py "$@"
