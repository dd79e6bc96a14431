#!/usr/bin/env bash
# One device step for the GPU backward: the package's GPU gradient tests (blasst.attention's backward
# on device tensors against the CPU engine's fp64 backward, FlexAttention against the torch formulas,
# the Triton kernels against the CPU engine, NaN positions) and the backward benchmark (torch
# formulas, FlexAttention, the Triton kernels in several block configurations and dq paths, cuDNN,
# FA2, errors against fp64). Needs BLASST_LIBRARY (a CUDA build of libblasst_py.so with head dims 64
# and 128) and pytest (the device image has it). About 9 minutes at most, one device call:
#   BLASST_LIBRARY=$PWD/.carry/bwd/libblasst_py.so BLASST_COMMIT=<sent commit> tests/gpu/device_run_backward.sh
# Logs and CSV rows land in $OUT (two files).
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out"
: "${BLASST_LIBRARY:?set BLASST_LIBRARY to a CUDA build of libblasst_py.so}"
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
log="$out/backward.log"
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s]"; }
# fewer hypothesis examples than on the CPU: each new shape compiles the kernels
(cd python/tests && BLASST_HYPOTHESIS_EXAMPLES=20 timeout 200 python3 -m pytest -q -p no:cacheprovider -rfE \
  --tb=line test_triton_backward.py test_cuda.py test_backward.py \
  -k "triton or gradients or flex or device_backward or nan or hf_tiny") > "$log" 2>&1
echo "GPU gradient tests: rc=$? $(el)"; grep -E "passed|failed|^FAILED|^ERROR|Error" "$log" | tail -8
# the Triton kernels: the default blocks and 8 warps, dq recomputed by kernel 2 or added by kernel 1
# with atomics (BLASST_TRITON_BWD_DQ), kernel 1's long lists whole or split in 4 (BLASST_TRITON_BWD_SPLIT)
configs="32,64,64,64,4,3;32,64,32,64,8,3"
B="python3 bench/gpu_backward_bench.py --reps 5 --csv $out/gpu_backward.csv --triton-configs $configs
   --triton-dq recompute,atomic --triton-split 1,4"
# errors against fp64 at 2K, then 8K at sparsity 0 and 0.4-0.8 (sink 10: bench/gpu_bench.make_inputs)
timeout 100 $B --d 128 --seqlens 2048 --lambdas 0,0.3 --sink 10 >> "$log" 2>&1; echo "d128 2K: rc=$? $(el)"
timeout 170 $B --d 128 --seqlens 8192 --check-len 0 --torch-max-len 4096 --sink 10 --lambdas 0,0.1,0.3,0.9 \
  >> "$log" 2>&1; echo "d128 8K: rc=$? $(el)"
timeout 100 $B --d 64 --seqlens 8192 --check-len 0 --torch-max-len 4096 --sink 10 --lambdas 0,0.3,0.9 \
  >> "$log" 2>&1; echo "d64 8K: rc=$? $(el)"
grep -E "^ +[0-9]+ (cudnn|fa2|blasst)|vs fp64|not available|failed" "$log" | tail -60
python3 bench/backward_targets.py --csv "$out/gpu_backward.csv"
