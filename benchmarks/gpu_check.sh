#!/usr/bin/env bash
# The GPU checks, in one go on a machine with one CUDA GPU (about 8 minutes):
#   1. the gpu tests (tests/test_gpu.py): CUDA prediction of both recipes against CPU fp32,
#      TF32 off under fp32, GPU memory flat in the record's length, precision recorded;
#   2. the GPU sections of bench_predict.py and bench_somo.py (--quick): windows per second,
#      the fraction of the GPU's matmul rate of the same shapes measured in the same run, and
#      the full record's cost in GPU-hours, the figures of the README's performance table.
# Run from the repository root after `make test`'s set-up (the venv with a CUDA build of
# torch):   bash benchmarks/gpu_check.sh [VENV]
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv}/bin/python"
export CASM_REAL_DATA="${CASM_REAL_DATA:-$(cd .. && pwd)/shared/data/real}"
"$PY" -c "import torch, sys; ok = torch.cuda.is_available(); print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0) if ok else 'no GPU'); sys.exit(0 if ok else 3)" || { echo "no CUDA device: nothing to check"; exit 3; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
status=0
step() {  # step NAME SECONDS CMD...: run with a time limit, report, remember failures
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "== $name"
    timeout "$limit" "$@" || { echo "== $name FAILED (exit $?)"; status=1; }
    echo "== $name: $((SECONDS - t0)) s"
}
step "gpu tests" 240 "$PY" -m pytest -q -s -m gpu tests/test_gpu.py -p no:cacheprovider
step "bench_predict --device cuda" 150 "$PY" benchmarks/bench_predict.py --quick --device cuda
step "bench_somo --device cuda" 150 "$PY" benchmarks/bench_somo.py --quick --device cuda
exit $status
