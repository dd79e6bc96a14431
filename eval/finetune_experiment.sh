#!/usr/bin/env bash
# The sparsity-aware fine-tuning experiment end to end: eval/finetune_sparsity.py trains the sparse arm
# (skip rule on at the training lambda) and the dense control from the same weights on the same windows,
# then eval/evaluate.py measures the base model, the control and the sparsity-tuned model on the held-out
# texts at the same lambdas, and eval/report_finetune.py writes the table and the plot.
#
#   eval/finetune_experiment.sh [--device cuda] [--steps 120] [--length 4096] [--train-lambda 0.99] ...
#   on a GPU machine with no network: eval/gpu_run.sh -- eval/finetune_experiment.sh --device cuda
set -euo pipefail
cd "$(dirname "$0")/.."

device=cpu steps=120 length=4096 batch=1 lr=2e-5 train_lambda=0.99 seed=0
eval_lambdas=0.3,0.5,0.7,0.9,0.99 tokens=8192 docs=licenses,node-api,cpp-source,py-source
passkey=8192 work="" results=bench/results/smollm2_finetune quick=0
usage() {
  cat <<'USAGE'
usage: eval/finetune_experiment.sh [options]

  --device DEV         cpu or cuda (default cpu; cuda trains with bf16 autocast and evaluates in bf16)
  --steps N            fine-tuning steps per arm (default 120)
  --length L           tokens per training window (default 4096)
  --batch B            windows per step (default 1)
  --lr LR              AdamW learning rate (default 2e-5)
  --train-lambda X     the sparse arm's lambda at the training length (default 0.99: the most skipping
                       the rule allows below lambda = 1)
  --lambdas LIST       evaluation lambdas (default 0.3,0.5,0.7,0.9,0.99)
  --tokens N           evaluation length of the perplexity texts (default 8192)
  --docs LIST          held-out texts (default licenses,node-api,cpp-source,py-source; eval/texts.py)
  --passkey LIST       pass key prompt lengths (default 8192; '' for none)
  --seed S             training seed (default 0)
  --work DIR           where the tuned weights and the evaluation files go (default a temporary folder)
  --results PATH       the report's path without extension (default bench/results/smollm2_finetune;
                       with $OUT set, $OUT/smollm2_finetune): <PATH>.{csv,md,png}, and <PATH>_runs.tar.gz
                       with the training logs and the three evaluation files
  --quick              a check of the pipeline: 2 steps of 256 tokens, 512-token evaluation, one lambda
  -h, --help           this text
USAGE
}
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=${2:?}; shift 2 ;;
    --steps) steps=${2:?}; shift 2 ;;
    --length) length=${2:?}; shift 2 ;;
    --batch) batch=${2:?}; shift 2 ;;
    --lr) lr=${2:?}; shift 2 ;;
    --train-lambda) train_lambda=${2:?}; shift 2 ;;
    --lambdas) eval_lambdas=${2:?}; shift 2 ;;
    --tokens) tokens=${2:?}; shift 2 ;;
    --docs) docs=${2:?}; shift 2 ;;
    --passkey) passkey=${2-}; shift 2 ;;
    --seed) seed=${2:?}; shift 2 ;;
    --work) work=${2:?}; shift 2 ;;
    --results) results=${2:?}; shift 2 ;;
    --quick) quick=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "finetune_experiment.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [ "$quick" = 1 ]; then
  steps=2 length=256 eval_lambdas=0.99 tokens=512 docs=licenses passkey=512
fi
if [ -n "${OUT:-}" ] && [ "$results" = bench/results/smollm2_finetune ]; then results="$OUT/smollm2_finetune"; fi
[ -n "$work" ] || work=$(mktemp -d /tmp/blasst-finetune.XXXXXX)
mkdir -p "$work" "$(dirname "$results")"

dtype=float32
[ "$device" = cuda ] && dtype=bfloat16
echo "== fine-tuning: $steps steps x $batch x $length tokens, sparse arm at lambda $train_lambda ($device)"
python3 eval/finetune_sparsity.py --out "$work" --device "$device" --steps "$steps" --length "$length" \
  --batch "$batch" --lr "$lr" --lambda "$train_lambda" --seed "$seed"

for model in base dense sparse; do
  echo "== evaluating the $model model"
  state=()
  [ "$model" = base ] || state=(--state-dict "$work/$model.pt")
  python3 eval/evaluate.py --backend blasst --dense-impl sdpa --device "$device" --dtype "$dtype" --threads 4 \
    --phases prefill --orders ascending --lambdas "$eval_lambdas" --docs "$docs" --tokens "$tokens" \
    --passkey-lengths "$passkey" --passkey-depths 0.1,0.5,0.9 --no-progress "${state[@]}" \
    --out "$work/eval_$model" > "$work/eval_$model.log"
  tail -1 "$work/eval_$model.log"
done

python3 eval/report_finetune.py --base "$work/eval_base.json" --dense-tuned "$work/eval_dense.json" \
  --sparse-tuned "$work/eval_sparse.json" --train-summary "$work/summary.json" --out "$results"
# the runs behind the report in one file (a GPU machine returns few files): the per-step training logs
# of both arms and the three evaluation files, from which report_finetune.py redraws the report
tar -czf "${results}_runs.tar.gz" -C "$work" summary.json sparse.json dense.json eval_base.json eval_dense.json \
  eval_sparse.json
echo "report: $results.md (runs: ${results}_runs.tar.gz)"
