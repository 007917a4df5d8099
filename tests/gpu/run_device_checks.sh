#!/usr/bin/env bash
# Everything issue 12 needs from a CUDA machine, in one run of under 5 minutes; builds nothing
# (the native CPU kernels are switched off) and starts no Ray.
#   1. numerics: the -m gpu checks of the Triton backend and of every variant on CUDA;
#   2. throughput: cudnn_lstm and every variant's fast path (the Triton kernels for lstm,
#      bn_vertical, bn_lstm, ln_lstm) at the smnist and ptb shapes, training and evaluation
#      batches, written to $OUT/gpu_bench_<shape>.json (pytest-benchmark) and printed as tables
#      ($OUT/gpu_table_<shape>.md: ratio to cudnn_lstm and peak memory, as README's Speed wants).
# Usage: OUT=/some/dir tests/gpu/run_device_checks.sh   (OUT defaults to ./gpu-checks)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-gpu-checks}"
mkdir -p "$OUT"
export RECNORM_NATIVE=0  # no C++ build on this machine; CPU-side references use the PyTorch loops
PY="${PYTHON:-python}"
"$PY" -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA'; \
print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" || exit 2
status=0
timeout 200 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_triton_cuda.py tests/gpu/test_fast_cuda.py \
    tests/gpu/test_gpu.py 2>&1 | tee "$OUT/gpu_numerics.txt" || status=1
for shape in smnist ptb; do  # one JSON per shape: a timeout in one keeps the other
    timeout 100 "$PY" -m pytest -q -p no:cacheprovider tests/bench/test_throughput.py --benchmark-only \
        -k "test_gpu and $shape- and not reference" --benchmark-json "$OUT/gpu_bench_$shape.json" \
        --benchmark-columns=median,iqr,rounds 2>&1 | tail -n 30 | tee "$OUT/gpu_bench_$shape.txt" || status=1
    [ -s "$OUT/gpu_bench_$shape.json" ] && "$PY" tests/gpu/bench_table.py "$OUT/gpu_bench_$shape.json" \
        | tee "$OUT/gpu_table_$shape.md"
done
exit $status
