#!/usr/bin/env bash
# Installs what blasst needs to build and test on a fresh Debian machine: compiler, CMake,
# GoogleTest, CLI11, nlohmann-json, clang with its sanitizer/fuzzer runtime. Idempotent:
# packages already installed are left alone and apt is not touched.
set -euo pipefail

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
