#!/usr/bin/env bash
# One device step for the GPU backward: the package's GPU gradient tests (blasst.attention's backward
# on device tensors against the CPU engine's fp64 backward, FlexAttention against the torch formulas,
# the Triton kernels against the CPU engine, NaN positions) and the backward benchmark (torch
# formulas, FlexAttention in 128- and 64-row blocks, the Triton kernels, cuDNN, FA2, errors against
# fp64). Needs BLASST_LIBRARY (a CUDA build of libblasst_py.so with head dims 64 and 128) and pytest
# (the device image has it). It takes most of one device call (about 9 minutes at most), so it fits
# as the first of the fine-tuning experiment's two commands, which carries the library:
#   BLASST_LIBRARY=$PWD/.carry/eval-model-a/libblasst_py.so BLASST_COMMIT=<sent commit> \
#     tests/gpu/device_run_backward.sh
# Logs and CSV rows land in $OUT (two files).
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out"
: "${BLASST_LIBRARY:?set BLASST_LIBRARY to a CUDA build of libblasst_py.so}"
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
log="$out/backward.log"
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s]"; }
(cd python/tests && timeout 150 python3 -m pytest -q -p no:cacheprovider test_triton_backward.py test_cuda.py \
  test_backward.py -k "triton or gradients or flex or device_backward or nan or hf_tiny") > "$log" 2>&1
echo "GPU gradient tests: rc=$? $(el)"; grep -E "passed|failed|Error" "$log" | tail -3
# the Triton kernels in their default blocks and two others (BLASST_TRITON_BWD_BLOCKS), each with dq
# recomputed by kernel 2 and added by kernel 1 with atomics (BLASST_TRITON_BWD_DQ)
configs="32,64,64,64,4,3;64,64,64,64,4,3;64,128,64,64,8,2"
B="python3 bench/gpu_backward_bench.py --lambdas 0,0.3,0.6 --reps 5 --csv $out/gpu_backward.csv --triton-configs $configs --triton-dq recompute,atomic"
timeout 180 $B --d 128 --seqlens 4096,8192 >> "$log" 2>&1; echo "backward bench d128: rc=$? $(el)"
timeout 110 $B --d 64 --seqlens 8192 --check-len 0 >> "$log" 2>&1; echo "backward bench d64: rc=$? $(el)"
# sparsity 0.5-0.8 (the skip target's range): a stronger sink at high lambdas
timeout 110 $B --d 128 --seqlens 8192 --check-len 0 --sink 14 --lambdas 0,0.5,0.9,0.99 >> "$log" 2>&1
echo "backward bench d128, sink 14: rc=$? $(el)"
grep -E "^ +[0-9]+ (cudnn|fa2|blasst)|vs fp64|not available" "$log" | tail -40
python3 bench/backward_targets.py --csv "$out/gpu_backward.csv"
