#!/usr/bin/env bash
# One device step for the GPU backward: the package's GPU gradient tests (blasst.attention's backward
# on device tensors against the CPU engine's fp64 backward, FlexAttention against the torch formulas,
# the Triton kernels against the CPU engine, NaN positions) and the backward benchmark (FlexAttention,
# the Triton kernels in several block configurations and switches, cuDNN, FA2). The Triton tests run
# rowsum(O dO) and the block lists by torch ops (BLASST_TRITON_BWD_ROWDOT=0, BLASST_TRITON_BWD_PLAN=torch) in one of
# their three parametrizations. Needs BLASST_LIBRARY (a CUDA build of libblasst_py.so with head dims
# 64 and 128) and pytest (the device image has it).
# About 5 minutes, one device call:
#   BLASST_LIBRARY=$PWD/.carry/bwd/libblasst_py.so BLASST_COMMIT=<sent commit> tests/gpu/device_run_backward.sh
# with the library built here first (carry .carry/bwd), e.g.
#   cmake -S . -B build-py -G Ninja -DSKBUILD=ON -DCMAKE_BUILD_TYPE=Release -DBLASST_CUDA=ON \
#     -DBLASST_CUDA_ARCHS=90a -DBLASST_CUDA_HEAD_DIMS="64;128" -DBLASST_BUILD_TESTS=OFF -DBLASST_BUILD_CLI=OFF \
#     -DCMAKE_POSITION_INDEPENDENT_CODE=ON && ninja -C build-py blasst_py && mkdir -p .carry/bwd \
#     && cp build-py/python/libblasst_py.so .carry/bwd/
# Logs and CSV rows land in $OUT (two files).
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out"
: "${BLASST_LIBRARY:?set BLASST_LIBRARY to a CUDA build of libblasst_py.so}"
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
log="$out/backward.log"
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s]"; }
# fewer hypothesis examples than on the CPU: each new shape compiles the kernels
(cd python/tests && BLASST_HYPOTHESIS_EXAMPLES=12 timeout 170 python3 -m pytest -q -p no:cacheprovider -rfE \
  --tb=line test_triton_backward.py test_cuda.py test_backward.py \
  -k "triton or gradients or flex or device_backward or nan or hf_tiny") > "$log" 2>&1
echo "GPU gradient tests: rc=$? $(el)"; grep -E "passed|failed|^FAILED|^ERROR|Error" "$log" | tail -8
# The Triton kernels (python/blasst/_triton_backward.py) in their default blocks, as the package runs
# by default and with rowsum(O dO) and the block lists by torch ops (rows named
# ...-torchrowsum-torchplan). At e375034 on an H100 (these two then switches, named the other way):
# 5.90 against 6.38 ms dense at d 128, 1.74 against 2.70 at sparsity 0.77; kernel 2 in 64 x 32
# blocks and 8 warps, and kernel 1 in 32 x 32 (no spills, unlike the defaults) were 1.3-2x slower.
B="python3 bench/gpu_backward_bench.py --reps 7 --check-len 0 --torch-max-len 4096"
for fused in 1 0; do
  plan=$([ $fused = 1 ] && echo kernel || echo torch)
  # sparsity 0 and about 0.45, 0.6, 0.75 (sink 10: bench/gpu_bench.make_inputs)
  BLASST_TRITON_BWD_ROWDOT=$fused BLASST_TRITON_BWD_PLAN=$plan timeout 130 $B --csv "$out/gpu_backward.csv" \
    --d 128 --seqlens 8192 --sink 10 --lambdas 0,0.1,0.3,0.9 >> "$log" 2>&1; echo "d128 8K fused $fused: rc=$? $(el)"
done
timeout 90 $B --csv "$out/gpu_backward.csv" --d 64 --seqlens 8192 --sink 10 --lambdas 0,0.3,0.9 >> "$log" 2>&1
echo "d64 8K: rc=$? $(el)"
grep -E "^ +[0-9]+ (cudnn|fa2|blasst)|not available|failed" "$log" | tail -60
echo "as the package runs by default:"
python3 bench/backward_targets.py --csv "$out/gpu_backward.csv"
