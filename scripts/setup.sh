#!/usr/bin/env bash
# Installs what blasst needs to build and test on a fresh Debian machine: compiler, CMake,
# GoogleTest, CLI11, nlohmann-json, clang with its sanitizer/fuzzer runtime, and (with nvcc) the
# CuTe/CUTLASS headers. Idempotent:
# packages already installed are left alone and apt is not touched.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

packages=(cmake g++ make libgtest-dev libcli11-dev nlohmann-json3-dev clang libclang-rt-14-dev git)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "blasst setup: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# CuTe/CUTLASS headers for the sm_90a kernels, where a CUDA compiler exists: the nvidia-cutlass
# wheel ships them; installed (no dependencies) under .deps/, where CMake looks first.
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  cutlass_dir="$root/.deps/cutlass"
  if [ ! -f "$cutlass_dir/cutlass_library/source/include/cute/tensor.hpp" ]; then
    echo "blasst setup: installing CUTLASS headers (nvidia-cutlass) into .deps/"
    python3 -m pip install -q --no-deps --disable-pip-version-check --target "$cutlass_dir" "nvidia-cutlass==4.2.0.0" ||
      echo "blasst setup: CUTLASS headers not installed; Hopper will run the sm_80 prefill kernel" >&2
  fi
fi
