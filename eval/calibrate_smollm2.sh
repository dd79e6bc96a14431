#!/usr/bin/env bash
# Calibrates SmolLM2-135M-Instruct with the package's calibrator (python -m blasst.calibrate), prefill and
# decode in one run, on the five texts of eval/texts.py, and writes config.json (the model's config plus
# the sparse_attention_config block), the report and the plots into one directory.
#
#   eval/calibrate_smollm2.sh --device cuda --order anchored --out data/smollm2_calibration_cuda
#   eval/calibrate_smollm2.sh --device cpu --order ascending --lengths 1024,2048,4096 --out /tmp/cal
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'EOF'
usage: eval/calibrate_smollm2.sh --out DIR [--device cpu|cuda] [--order ascending|anchored]
                                 [--lengths L1,L2,...] [--samples-per-bin N] [--decode-tokens N]

  --out DIR            directory for config.json, blasst_calibration_report.json and the plots
  --device DEV         cpu (float32, CPU engine; default) or cuda (bfloat16, CUDA engine)
  --order ORDER        visiting order to calibrate (default ascending; the factor depends on it, and in
                       ascending order on the engine's split count too)
  --lengths LIST       length bins in tokens (default 2048,4096,8192)
  --samples-per-bin N  windows per bin (default 2)
  --decode-tokens N    greedy decode steps per sample for the decode phase (default 8)
  -h, --help           this text

Needs the blasst package (importable, or PYTHONPATH=python with BLASST_LIBRARY), transformers, gguf and
the model (eval/load_smollm2.py finds it; $BLASST_SMOLLM2_GGUF overrides).
EOF
}

out=""
device=cpu
order=ascending
lengths=2048,4096,8192
per_bin=2
decode_tokens=8
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="${2:?--out needs a value}"; shift 2 ;;
    --device) device="${2:?--device needs a value}"; shift 2 ;;
    --order) order="${2:?--order needs a value}"; shift 2 ;;
    --lengths) lengths="${2:?--lengths needs a value}"; shift 2 ;;
    --samples-per-bin) per_bin="${2:?--samples-per-bin needs a value}"; shift 2 ;;
    --decode-tokens) decode_tokens="${2:?--decode-tokens needs a value}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "calibrate_smollm2.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$out" ] || { echo "calibrate_smollm2.sh: --out is required (see --help)" >&2; exit 2; }
case "$device" in
  cpu) dev_args=(--device cpu --dtype float32 --engine cpu) ;;
  cuda) dev_args=(--device cuda --dtype bfloat16 --engine cuda) ;;
  *) echo "calibrate_smollm2.sh: --device is '$device', expected cpu or cuda" >&2; exit 2 ;;
esac
case "$order" in ascending|anchored) ;; *)
  echo "calibrate_smollm2.sh: --order is '$order', expected ascending or anchored" >&2; exit 2 ;;
esac

texts_dir=$(mktemp -d)
trap 'rm -rf "$texts_dir"' EXIT
# one .txt per document, joined as texts.load() joins its files
python3 - "$texts_dir" <<'EOF'
import os, sys
sys.path.insert(0, "eval")
import texts
names = texts.available()
if not names:
    sys.exit("calibrate_smollm2.sh: none of the texts of eval/texts.py is on this machine")
for n in names:
    with open(os.path.join(sys.argv[1], f"{n}.txt"), "w") as f:
        f.write(texts.load(n).text)
print("texts:", ", ".join(names))
EOF
gguf=$(python3 -c 'import sys; sys.path.insert(0, "eval"); from load_smollm2 import find_gguf; print(find_gguf())')
mkdir -p "$out"
rm -f "$out/config.json"  # a fresh config from the model, not an update of an earlier one
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python3 -m blasst.calibrate \
  --model "$(dirname "$gguf")" --gguf-file "$(basename "$gguf")" "${dev_args[@]}" \
  --texts "$texts_dir" --lengths "$lengths" --samples-per-bin "$per_bin" \
  --phases prefill,decode --decode-tokens "$decode_tokens" --order "$order" \
  --output "$out/config.json" --report "$out/blasst_calibration_report.json" --plot-dir "$out"
