#!/usr/bin/env bash
# One pass on a machine with a GPU: build the shared library with the CUDA engine, build the
# GPU tests (against a system GoogleTest, or the sources in $GTEST_SRC), run them, run the
# sanitizer subset, dump the kernels' resource usage, and run the benchmark.
#   STAGES   subset of "build test sanitize sass profile bench" (default: all but profile)
#   OUT      where logs and the benchmark CSV go (default: build-gpu/out)
#   BENCH_ARGS  extra arguments for bench/gpu_bench.py
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
stages=${STAGES:-build test sanitize sass bench}
out=${OUT:-$root/build-gpu/out}
build=$root/build-gpu
archs=${BLASST_CUDA_ARCHS:-90a}
mkdir -p "$out"
has() { [[ " $stages " == *" $1 "* ]]; }
status=0

if has build; then
  t0=$(date +%s)
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DBLASST_CUDA=ON \
    -DBLASST_CUDA_ARCHS="$archs" -DBLASST_BUILD_TESTS=OFF -DBLASST_BUILD_CLI=OFF >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
  ninja -C "$build" src/libblasst.so 2>&1 | tee -a "$out/build.log" | grep -E "error|spill" ; [ "${PIPESTATUS[0]}" = 0 ] || exit 1
  gt=${GTEST_SRC:-$root/.carry/googletest/googletest}
  if [ -f /usr/include/gtest/gtest.h ] && [ -z "${GTEST_SRC:-}" ]; then
    gtest_flags=(-lgtest -lgtest_main)
  else
    gtest_flags=(-I"$gt/include" -I"$gt" "$gt/src/gtest-all.cc" "$gt/src/gtest_main.cc")
  fi
  g++ -O2 -std=c++20 -Iinclude -I/usr/local/cuda/include tests/gpu/test_prefill_gpu.cpp tests/gpu/gpu_test_support.cpp \
    "${gtest_flags[@]}" -L"$build/src" -lblasst -L/usr/local/cuda/lib64 -lcudart -pthread -Wl,-rpath,"$build/src" \
    -o "$build/blasst_gpu_tests" || exit 1
  echo "build: $(( $(date +%s) - t0 )) s"
fi
if has test; then
  "$build/blasst_gpu_tests" 2>&1 | tee "$out/tests.log" | grep -E "^\[  |FAIL|Failure|error|  \[lq" | head -150
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  # the same suite with V loaded only after the vote
  BLASST_CUDA_V_PREFETCH=0 "$build/blasst_gpu_tests" >"$build/tests_no_prefetch.log" 2>&1
  rc=$?
  echo "tests with BLASST_CUDA_V_PREFETCH=0: exit $rc; $(grep -E '^\[  (PASSED|FAILED)' "$build/tests_no_prefetch.log" | tr '\n' ' ')"
  [ $rc = 0 ] || { status=1; grep -E "Failure|FAILED" -A3 "$build/tests_no_prefetch.log" | head -40 >>"$out/tests.log"; }
fi
if has sanitize; then
  for tool in memcheck racecheck; do
    compute-sanitizer --tool $tool --error-exitcode 9 "$build/blasst_gpu_tests" \
      --gtest_filter='*SanitizerSubset*:*RejectsWhatItCannotRun*' >"$build/sanitize_$tool.log" 2>&1
    rc=$?
    cat "$build/sanitize_$tool.log" >>"$out/sanitize.log"
    echo "compute-sanitizer $tool: exit $rc; $(grep -E 'ERROR SUMMARY|PASSED|FAILED' "$build/sanitize_$tool.log" | tr '\n' ' ')"
    [ $rc = 0 ] || status=1
  done
fi
if has sass; then
  cuobjdump --dump-resource-usage "$build/src/libblasst.so" 2>&1 | grep -E "Function|REG" | sed 's/_ZN6blasst4cuda14prefill_kernelINS0_13PrefillConfigI//' >"$out/resources.txt"
  cuobjdump --dump-sass "$build/src/libblasst.so" >"$build/sass.txt" 2>&1
  awk '/Function :/{f=$3} /LDL|STL/{n[f]++} /HMMA/{h[f]++} END{for(k in h) printf "%s HMMA=%d LDL/STL=%d\n", k, h[k], n[k]}' \
    "$build/sass.txt" | sed 's/_ZN6blasst4cuda14prefill_kernelINS0_13PrefillConfigI//' >>"$out/resources.txt"
  cat "$out/resources.txt"
  # SASS of the bf16 d=128 kernels (dense and skip) for reading off-line
  awk '/Function :/{keep = ($3 ~ /bfloat16Li128/)} keep' "$build/sass.txt" >"$out/sass_bf16_d128.txt"
fi
if has profile; then
  ncu --clock-control none --kernel-name regex:'prefill_kernel|flash_fwd' \
    --section SpeedOfLight --section WarpStateStats --section ComputeWorkloadAnalysis --section Occupancy \
    --section MemoryWorkloadAnalysis --section SourceCounters \
    python3 bench/gpu_bench.py --lib "$build/src/libblasst.so" --profile-once --seqlens 8192 --causal 0 --sf 3000 \
    >"$out/ncu.txt" 2>&1
  echo "ncu: exit $?"
  grep -E "prefill_kernel|flash_fwd|Duration|Compute \(SM\) Throughput|Issue Slots Busy|Warp Cycles Per Issued|Stall|Registers Per|Achieved Occupancy|Bank Conflicts|L2 Hit" "$out/ncu.txt" | head -80
fi
if has bench; then
  PYTHONUNBUFFERED=1 python3 bench/gpu_bench.py --phase prefill --lib "$build/src/libblasst.so" \
    --csv "$out/gpu_prefill.csv" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench.log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
exit $status
