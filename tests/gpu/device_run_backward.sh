#!/usr/bin/env bash
# One device step for the GPU backward: the package's GPU gradient tests (blasst.attention's backward
# on device tensors against the CPU engine's fp64 backward, FlexAttention against the torch formulas,
# the Triton kernels against the CPU engine, NaN positions) and the backward benchmark (FlexAttention,
# the Triton kernels in several block configurations and switches, cuDNN, FA2). The Triton tests run
# the switches that are off by default (BLASST_TRITON_BWD_ROWDOT, BLASST_TRITON_BWD_PLAN) in two of
# their three parametrizations. Needs BLASST_LIBRARY (a CUDA build of libblasst_py.so with head dims
# 64 and 128) and pytest (the device image has it).
# About 8 minutes, one device call:
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
# The Triton kernels (python/blasst/_triton_backward.py): the default blocks; kernel 2 in 64 x 32
# blocks and 8 warps (no spills under Triton 3.6, against 168 bytes a thread by default); kernel 1 in
# 32 x 32 blocks too (no spills; 800 bytes by default at d 128 with split lists). Each as the package
# runs by default, and with rowsum(O dO) and the block lists by Triton kernels
# (BLASST_TRITON_BWD_ROWDOT=1 BLASST_TRITON_BWD_PLAN=kernel: rows named ...-rowdot-plan), at the
# default split (4).
configs="32,64,64,64,4,3;32,64,64,32,4,3,8,3;32,32,64,32,4,3,8,3"
B="python3 bench/gpu_backward_bench.py --reps 7 --check-len 0 --torch-max-len 4096 --triton-configs $configs"
for fused in 0 1; do
  plan=$([ $fused = 1 ] && echo kernel || echo torch)
  # sparsity 0 and about 0.45, 0.6, 0.75 (sink 10: bench/gpu_bench.make_inputs)
  BLASST_TRITON_BWD_ROWDOT=$fused BLASST_TRITON_BWD_PLAN=$plan timeout 130 $B --csv "$out/gpu_backward_fused$fused.csv" \
    --d 128 --seqlens 8192 --sink 10 --lambdas 0,0.1,0.3,0.9 >> "$log" 2>&1; echo "d128 8K fused $fused: rc=$? $(el)"
done
BLASST_TRITON_BWD_ROWDOT=1 BLASST_TRITON_BWD_PLAN=kernel timeout 90 $B --csv "$out/gpu_backward_fused1.csv" --d 64 \
  --seqlens 8192 --sink 10 --lambdas 0,0.3,0.9 >> "$log" 2>&1; echo "d64 8K fused 1: rc=$? $(el)"
grep -E "^ +[0-9]+ (cudnn|fa2|blasst)|not available|failed" "$log" | tail -60
echo "as the package runs by default:"
python3 bench/backward_targets.py --csv "$out/gpu_backward_fused0.csv"
echo "rowsum(O dO) and the block lists by Triton kernels:"
python3 bench/backward_targets.py --csv "$out/gpu_backward_fused1.csv" --kernel blasst-triton-rowdot-plan
