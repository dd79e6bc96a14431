#!/usr/bin/env bash
# Installs the blasst Python package from this checkout and runs its pytest suite.
#   python/run_tests.sh [pytest args...]
# Environment:
#   PYTHON        interpreter to use (default python3)
#   BLASST_CUDA   AUTO/ON/OFF for the CUDA engines (default: AUTO when a GPU is visible, else OFF,
#                 so that a CPU-only machine with nvcc does not spend time compiling kernels)
#   SKIP_INSTALL  1 = test the package already installed
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ -z "${BLASST_CUDA:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then BLASST_CUDA=AUTO; else BLASST_CUDA=OFF; fi
fi

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  # torch from PyPI is large: install it only when it is missing.
  "$PYTHON" -c "import torch" 2>/dev/null || "$PYTHON" -m pip install torch
  "$PYTHON" -m pip install -q scikit-build-core numpy pytest hypothesis tqdm matplotlib scipy "transformers>=4.56"
  # --no-build-isolation: build with the scikit-build-core and cmake already here (no download);
  # the build tree stays in build-py/ (pyproject.toml) so rebuilds are incremental.
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
    "$PYTHON" -m pip install -q --no-build-isolation --no-deps ./ -C cmake.define.BLASST_CUDA="$BLASST_CUDA"
fi

# Run from outside the source tree so that the installed package (with its native library) is tested.
cd python/tests
unset BLASST_LIBRARY
# with the evaluation's report of the fine-tuning experiment (pure Python, synthetic inputs)
exec "$PYTHON" -m pytest -q -p no:cacheprovider "$@" . ../../eval/tests/test_report_finetune.py
