#!/usr/bin/env bash
# Configures and builds blasst into $BLASST_BUILD_DIR (default: build/). Extra arguments go to
# CMake's configure step, e.g. scripts/build.sh -DBLASST_CUDA=OFF.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BLASST_BUILD_DIR:-$root/build}
jobs=${BLASST_JOBS:-$(nproc)}
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$build" -j "$jobs"
