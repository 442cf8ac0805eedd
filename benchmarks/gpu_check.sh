#!/usr/bin/env bash
# Issue 10 §6 in one go, for a machine with CUDA (about 10 minutes): the GPU tests (fp32 fused path
# and bf16 against the CPU's loss curve) and the training benchmark, whose CUDA rows are added
# when CUDA is present (it reads the ML-1M subset from ../shared/data; pass another file with
# BENCH_SOURCE=...). Results: $OUT (default /tmp/gpu-check): pytest log and bench_train.json.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-venv.sh
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
.venv/bin/python -c "import sys, torch; torch.cuda.is_available() or sys.exit('gpu_check: no CUDA device here'); print(torch.cuda.get_device_name(0))"
# A failing test must not cost the benchmark's figures (GPU time is short): run both, exit with the tests' status.
tests_rc=0
PREFECT_HOME="$PWD/.prefect" .venv/bin/python -m pytest -m gpu -s -v tests 2>&1 | tee "$out/pytest-gpu.log" || tests_rc=$?
.venv/bin/python benchmarks/bench_train.py --presets gru4rec-xe gru4rec-bprmax --threads 1 --epochs 2 \
    ${BENCH_SOURCE:+--source "$BENCH_SOURCE"} --out "$out/bench_train.json" 2>&1 | tee "$out/bench_train.log"
exit "$tests_rc"
