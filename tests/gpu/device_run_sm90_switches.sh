#!/usr/bin/env bash
# One device call for the sm_90a paths behind switches (off by default until measured), from a shared
# CUDA build: DIR holds libblasst.so, blasst_gpu_tests and blasst_gpu_mla_tests, e.g.
#   cmake -B build-so -DBUILD_SHARED_LIBS=ON -DBLASST_CUDA=ON -DBLASST_CUDA_ARCHS=90a \
#     -DBLASST_CUDA_HEAD_DIMS="128;192;256" -DBLASST_BUILD_TESTS=ON
#   cmake --build build-so --target blasst blasst_gpu_tests blasst_gpu_mla_tests
# with the three files copied into DIR. Tests first, then the benchmarks, in order of priority, each
# under its own time limit (the whole stays under a 10-minute call):
#   - MLA decode with multicast clusters (BLASST_CUDA_MLA_CLUSTER=1): its tests, and an A/B against
#     the cluster-free kernel (two processes, same machine), then anchored order (the skip splits);
#   - head dim 256 on the sm_90a prefill kernel (BLASST_CUDA_SM90_D256=1): its test, and the benchmark
#     with the sm_80 kernel as a twin in the same rotation, beside cuDNN, FA2 and FA3;
#   - FP8 prefill (BLASST_CUDA_SM90_FP8_PREFILL=1): its tests.
# The FA3 peer is the fa3-fwd wheel in .whl/ (pip download fa3-fwd==0.0.3 --no-deps
# --only-binary=:all: -d .whl). Logs and CSV rows land in $OUT.
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out"
d=${DIR:?set DIR to the folder of libblasst.so and the GPU test binaries}
export LD_LIBRARY_PATH=$d PYTHONPATH=/tmp/site:$PWD/python
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/fa3_fwd-*.whl
nvidia-smi --query-gpu=name --format=csv,noheader
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s]"; }
show() { grep -E "^\[  (PASSED|FAILED)|Failure|Expected|actual|rounding|decision" "$1" | head -"${2:-12}"; }

BLASST_CUDA_MLA_CLUSTER=1 timeout 80 $d/blasst_gpu_mla_tests > "$out/t_mla_cluster.log" 2>&1
echo "mla decode tests, clusters on: rc=$? $(el)"; show "$out/t_mla_cluster.log"
BLASST_CUDA_SM90_D256=1 timeout 60 $d/blasst_gpu_tests --gtest_filter='PrefillGpu.Sm90HeadDim256' \
  > "$out/t_d256.log" 2>&1
echo "d256 sm90 test: rc=$? $(el)"; show "$out/t_d256.log"
timeout 60 $d/blasst_gpu_tests --gtest_filter='Fp8PrefillGpu.*' > "$out/t_fp8.log" 2>&1
echo "fp8 prefill tests: rc=$? $(el)"; show "$out/t_fp8.log" 16

BLASST_CUDA_SM90_D256=1 timeout 110 python3 bench/gpu_bench.py --lib $d/libblasst.so --d 256 --fa3 \
  --twin BLASST_CUDA_SM90_D256=0:sm80 --seqlens 8192,16384 --causal 0,1 --lambdas 0.3,0.6 --reps 8 \
  --csv "$out/gpu_prefill_d256.csv" --commit ${COMMIT:-unknown} > "$out/b_d256.log" 2>&1
echo "d256 bench: rc=$? $(el)"
B="python3 bench/gpu_mla_decode_bench.py --lib $d/libblasst.so --csv $out/gpu_mla_decode.csv --commit ${COMMIT:-unknown}"
BLASST_CUDA_MLA_CLUSTER=1 timeout 100 $B --reps 12 --lambdas 0.016 --no-cpu-groups > "$out/b_mla_cluster.log" 2>&1
echo "mla decode bench, clusters: rc=$? $(el)"
timeout 100 $B --reps 12 --lambdas 0.016 --no-cpu-groups > "$out/b_mla_plain.log" 2>&1
echo "mla decode bench, no clusters: rc=$? $(el)"
timeout 80 $B --reps 12 --order anchored --points 64x8192,32x32768 --lq 1 --lambdas 0.004,0.016,0.06 \
  --no-cpu-groups > "$out/b_mla_anchored.log" 2>&1
echo "mla decode bench, anchored: rc=$? $(el)"

echo "== d256"; grep -vE "^\s*$" "$out/b_d256.log" | tail -34
echo "== mla decode, clusters"; grep -E "^Hq|fa3 |blasst|Error|error" "$out/b_mla_cluster.log" | grep -v contig | head -24
echo "== mla decode, no clusters"; grep -E "^Hq|blasst" "$out/b_mla_plain.log" | grep -v contig | head -24
echo "== mla decode, anchored"; grep -E "^Hq|fa3 |blasst" "$out/b_mla_anchored.log" | grep -v contig | head -24
