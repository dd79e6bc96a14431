#!/usr/bin/env bash
# The test suite on a fresh machine: install dependencies, then
#   1. Release build with -Werror, all CTest tests (GPU tests skip themselves with no GPU);
#   2. AddressSanitizer + UndefinedBehaviorSanitizer build of the CPU library and tests;
#   3. the libFuzzer target over the C ABI's argument validation, for a bounded time;
#   4. the Python package (pip install from this checkout, then pytest; torch comes from PyPI).
# BLASST_TEST_STAGES selects stages (default "release sanitize fuzz python").
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
stages=${BLASST_TEST_STAGES:-release sanitize fuzz python}
jobs=${BLASST_JOBS:-$(nproc)}
"$root/scripts/setup.sh"

for stage in $stages; do
  echo "=== blasst tests: $stage ==="
  case "$stage" in
    release)
      # Tests ON explicitly: build/ may hold demo.sh's configuration, which leaves them out.
      BLASST_BUILD_DIR="$root/build" "$root/scripts/build.sh" -DBLASST_WERROR=ON -DBLASST_BUILD_TESTS=ON
      ctest --test-dir "$root/build" --output-on-failure --no-tests=error -j "$jobs" -LE fuzz
      ;;
    sanitize)
      BLASST_BUILD_DIR="$root/build-sanitize" "$root/scripts/build.sh" -DBLASST_CUDA=OFF -DBLASST_WERROR=ON \
        -DBLASST_BUILD_CLI=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBLASST_SANITIZE=address,undefined
      BLASST_TEST_SCALE=small ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
        ctest --test-dir "$root/build-sanitize" --output-on-failure --no-tests=error -j "$jobs" -LE 'fuzz|gpu|package'
      ;;
    fuzz)
      BLASST_BUILD_DIR="$root/build-fuzz" "$root/scripts/build.sh" -DBLASST_CUDA=OFF -DBLASST_BUILD_CLI=OFF \
        -DBLASST_BUILD_TESTS=OFF -DBLASST_BUILD_FUZZERS=ON -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++
      ctest --test-dir "$root/build-fuzz" --output-on-failure --no-tests=error -L fuzz
      ;;
    python)
      "$root/python/run_tests.sh"
      ;;
    *)
      echo "unknown stage '$stage' (expected release, sanitize, fuzz or python)" >&2
      exit 2
      ;;
  esac
done
