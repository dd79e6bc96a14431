#!/usr/bin/env bash
# One device call for the MLA decode kernel (multicast clusters on and off), MLA prefill 192/128 and
# FP8 prefill, from a shared CUDA build (DIR: libblasst.so, blasst_gpu_tests, blasst_gpu_mla_tests;
# e.g. cmake -B build-so -DBUILD_SHARED_LIBS=ON -DBLASST_CUDA=ON -DBLASST_CUDA_ARCHS=90a
# -DBLASST_CUDA_HEAD_DIMS="64;128;192" -DBLASST_BUILD_TESTS=ON, the three files copied into DIR): tests first,
# then the benchmarks, in order of priority, each step under its own time limit. The FA3 peer is
# the fa3-fwd wheel in .whl/ (pip download fa3-fwd==0.0.3 --no-deps --only-binary=:all: -d .whl).
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out"
d=${DIR:?set DIR to the folder of libblasst.so and the GPU test binaries}
export LD_LIBRARY_PATH=$d PYTHONPATH=/tmp/site:$PWD/python
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/fa3_fwd-*.whl
nvidia-smi --query-gpu=name --format=csv,noheader
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s]"; }
BLASST_CUDA_MLA_CLUSTER=1 timeout 80 $d/blasst_gpu_mla_tests > "$out/t_mla_decode.log" 2>&1; echo "mla decode tests rc=$? $(el)"
grep -E "^\[  (PASSED|FAILED)|Failure|Expected|actual|trace" "$out/t_mla_decode.log" | head -12
B="python3 bench/gpu_mla_decode_bench.py --lib $d/libblasst.so --csv $out/gpu_mla_decode.csv --commit ${COMMIT:-unknown} --reps 15"
BLASST_CUDA_MLA_CLUSTER=1 timeout 120 $B --lambdas 0.016 --no-cpu-groups > "$out/b_mla_decode.log" 2>&1; echo "mla decode bench rc=$? $(el)"
timeout 100 $B --no-cpu-groups --lambdas 0.016 > "$out/b_mla_plain.log" 2>&1; echo "without clusters rc=$? $(el)"
timeout 70 $d/blasst_gpu_tests --gtest_filter='MlaPrefillGpu.*' > "$out/t_mla_prefill.log" 2>&1; echo "mla prefill tests rc=$? $(el)"
grep -E "^\[  (PASSED|FAILED)|Failure|Expected|actual" "$out/t_mla_prefill.log" | head -12
timeout 70 $d/blasst_gpu_tests --gtest_filter='Fp8PrefillGpu.*' > "$out/t_fp8.log" 2>&1; echo "fp8 prefill tests rc=$? $(el)"
grep -E "^\[  (PASSED|FAILED)|Failure|Expected|actual|decision" "$out/t_fp8.log" | head -16
timeout 100 python3 bench/gpu_bench.py --mla --lib $d/libblasst.so --seqlens 8192,16384 --causal 0,1 \
  --lambdas 0.3,0.6 --reps 8 --csv "$out/gpu_prefill_mla.csv" --commit ${COMMIT:-unknown} > "$out/b_mla_prefill.log" 2>&1
echo "mla prefill bench rc=$? $(el)"
timeout 90 python3 bench/gpu_bench.py --fp8 --lib $d/libblasst.so --d 128 --seqlens 8192,16384 --causal 0,1 \
  --lambdas 0.00001,0.3,0.6 --reps 8 --csv "$out/gpu_prefill_fp8.csv" --commit ${COMMIT:-unknown} > "$out/b_fp8.log" 2>&1
echo "fp8 bench rc=$? $(el)"
timeout 60 $B --no-cpu-groups --hq 16 --lq 1 --lambdas 0.016 > "$out/b_mla_hq16.log" 2>&1; echo "hq16 rc=$? $(el)"
echo "== mla decode"; grep -E "^Hq|fa3 |blasst|fp64" "$out/b_mla_decode.log" | grep -v contig | head -40
echo "== without clusters"; grep -E "^Hq|blasst" "$out/b_mla_plain.log" | head -24
echo "== hq16"; grep -E "^Hq|fa3 |blasst" "$out/b_mla_hq16.log" | head -12
echo "== mla prefill"; grep -vE "^\s*$" "$out/b_mla_prefill.log" | tail -30
echo "== fp8"; grep -vE "^\s*$" "$out/b_fp8.log" | tail -30
