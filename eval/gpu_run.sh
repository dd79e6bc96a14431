#!/usr/bin/env bash
# Runs the SmolLM2 evaluation on a GPU machine from what eval/gpu_stage.sh packed (see there): joins and
# checks the model file, installs the gguf wheel into a private directory, points the loader at the
# texts and the CUDA library, then runs `eval/run_all.sh --device cuda` with the arguments given here.
# When $OUT is set (a folder that comes back from the machine), the results are written there.
#
#   eval/gpu_run.sh [--stage-dir DIR] [--resume RESULTS.json] [run_all.sh options, e.g. --stages both-long]
#   eval/gpu_run.sh [--stage-dir DIR] -- COMMAND ...   (any command in the same environment, e.g.
#                                                       eval/calibrate_smollm2.sh --device cuda ...)
#
# --resume: rows of an earlier call (e.g. stages that fit in the previous command) to merge the new
# stages into; with $OUT set it is copied there first, so one JSON holds every stage.
set -euo pipefail
cd "$(dirname "$0")/.."

stage=".carry"
resume=""
passthrough=0
while true; do
  case "${1:-}" in
    --stage-dir) stage="${2:?--stage-dir needs a value}"; shift 2 ;;
    --resume) resume="${2:?--resume needs a value}"; shift 2 ;;
    --) passthrough=1; shift; break ;;
    *) break ;;
  esac
done
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,7p' "$0"; echo; exec eval/run_all.sh --help
fi
a="$stage/eval-model-a"
r="$stage/eval-run"
for f in "$a/model.xz.part-a" "$a/libblasst_py.so" "$r/model.xz.part-b" "$r/model.sha256"; do
  [ -f "$f" ] || { echo "gpu_run.sh: $f is missing: stage with eval/gpu_stage.sh and send $a in the" \
                        "command before this one, on the same machine" >&2; exit 1; }
done

model_dir=/tmp/blasst-smollm2
model_file="$model_dir/$(cut -d' ' -f3 "$r/model.sha256")"  # the name sha256sum recorded
mkdir -p "$model_dir"
cat "$a/model.xz.part-a" "$r"/model.xz.part-[b-z] | xz -d > "$model_file"  # every later part, in order
(cd "$model_dir" && sha256sum -c --quiet "$OLDPWD/$r/model.sha256") ||
  { echo "gpu_run.sh: the joined model file does not match its SHA-256" >&2; exit 1; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/blasst-site \
  "$r"/wheels/*.whl
export PYTHONPATH="/tmp/blasst-site:$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
export BLASST_SMOLLM2_GGUF="$model_file"
export BLASST_TEXT_ROOT="$PWD/$r/texts"
export BLASST_LIBRARY="$PWD/$a/libblasst_py.so"
export PYTHONUNBUFFERED=1
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))'

if [ "$passthrough" = 1 ]; then
  [ $# -gt 0 ] || { echo "gpu_run.sh: nothing after --" >&2; exit 2; }
  exec "$@"
fi
out_args=()
if [ -n "${OUT:-}" ]; then out_args=(--out "$OUT/smollm2_eval_gpu"); fi
if [ -n "$resume" ]; then
  [ -f "$resume" ] || { echo "gpu_run.sh: --resume $resume does not exist" >&2; exit 2; }
  dest="${OUT:-bench/results}/smollm2_eval_gpu.json"
  [ "$(realpath "$resume")" = "$(realpath -m "$dest")" ] || cp "$resume" "$dest"
fi
exec eval/run_all.sh --device cuda --no-report "${out_args[@]}" "$@"
