#!/usr/bin/env bash
# One device call for FP8 prefill with P V on the e4m3 wgmma (BLASST_CUDA_SM90_FP8_PV_E4M3): the
# FP8 GPU tests (decisions and outputs against the CPU engine; each case prints its worst row
# error, to size the tolerance of P in e4m3), then the FP8 benchmark against FlashAttention-3's
# FP8 forward and our bf16 in the same run. DIR holds libblasst.so and blasst_gpu_tests of a build
# with the switch on, e.g.
#   cmake -B build-fp8-so -DBUILD_SHARED_LIBS=ON -DBLASST_CUDA=ON -DBLASST_CUDA_ARCHS=90a \
#     -DBLASST_CUDA_HEAD_DIMS="64;128" -DBLASST_CUDA_FP16=OFF -DBLASST_CUDA_SM90_MLA_DECODE=OFF \
#     -DBLASST_CUDA_SM90_FP8_PV_E4M3=ON -DBLASST_BUILD_TESTS=ON
#   cmake --build build-fp8-so --target blasst blasst_gpu_tests
# and .whl the fa3-fwd wheel (carry both). COMMIT names the tree; logs and CSV rows land in $OUT.
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out"
d=${DIR:?set DIR to the folder of libblasst.so and blasst_gpu_tests}
export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name --format=csv,noheader
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s]"; }
timeout 150 $d/blasst_gpu_tests --gtest_filter='Fp8PrefillGpu.*' > "$out/fp8_tests.log" 2>&1
echo "fp8 prefill tests: rc=$? $(el)"
grep -E "^\[  (PASSED|FAILED)|Failure|decision differs|row [0-9]+ head|\[fp8" "$out/fp8_tests.log" | sort | uniq -c | sort -rn | head -30
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/fa3_fwd-*.whl
export PYTHONPATH=/tmp/site:$PWD/python
for dim in 128 64; do
  timeout $([ $dim = 128 ] && echo 250 || echo 130) python3 bench/gpu_bench.py --fp8 --lib $d/libblasst.so --d $dim \
    --seqlens $([ $dim = 128 ] && echo 16384,32768 || echo 16384) --causal 0,1 --lambdas 0.00001,0.3,0.6,0.95 \
    --reps 15 --csv "$out/gpu_prefill_fp8.csv" --commit "${COMMIT:-unknown}" > "$out/fp8_bench_d$dim.log" 2>&1
  echo "bench d=$dim: rc=$? $(el)"; grep -vE "^\s*$" "$out/fp8_bench_d$dim.log" | tail -40
done
