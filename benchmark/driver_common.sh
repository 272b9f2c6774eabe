# Shared by the four run_*.sh drivers (sourced, not run). Settings follow the fork's scripts
# (spec §6); every value can be overridden from the environment:
#   BATCH_SIZES="32 64 128 256"  NUM_PROMPTS=5000  MAX_NEW_TOKENS=2048  BLOCK_LENGTH=32
#   DENOISING_STEPS=<block length>  UNMASKING=low_confidence_dynamic  THRESHOLD=0.9
#   PAPER_THRESHOLDS=1   FOCUS at 0.8 vs the rest at 0.9, as the paper ran it (mixes two effects)
#   ONE_ENGINE=1         all batch sizes in one process / one engine sized for the largest
#   RESULTS_DIR=./results  ARM_TAG=<suffix of the arm label>  EXTRA_ARGS="<more profile_throughput args>"
#   EAGER_MODE=1         no CUDA graphs (the fork's scripts measured eager; default: graphs, what users run)
#   REPEAT_GUARD=0       no repetition guard (the fork's scripts stop a request whose blocks repeat; a cost point
#                        with --ignore-eos must generate its nominal length: random MoE weights repeat, and the
#                        guard cut 85 % of SDAR-MoE's requests at ~80 of 256 tokens)
#   DRY_RUN=1            print each profile_throughput command (one line, shell-quoted, after
#                        'DRY_RUN: ', LMDEPLOY_FOCUS_* switches as an 'env' prefix) instead of running
#                        it; nothing needs a GPU or a model
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# -h / --help: the calling driver's own usage (its header comment), not profile_throughput's four times over
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0
fi
# the on/off switches: 0 or 1 (DRY_RUN=true started the real benchmark; EAGER_MODE=yes was silently off)
for switch in DRY_RUN EAGER_MODE ONE_ENGINE PAPER_THRESHOLDS REPEAT_GUARD; do
  case ${!switch:-0} in 0|1) ;; *) echo "$switch=${!switch}: 0 or 1" >&2; exit 2 ;; esac
done
SAMPLE_DATASET="$BENCH_DIR/data/sharegpt_sample.json"
BATCH_SIZES=${BATCH_SIZES:-"32 64 128 256"}
NUM_PROMPTS=${NUM_PROMPTS:-5000}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-2048}
UNMASKING=${UNMASKING:-low_confidence_dynamic}
THRESHOLD=${THRESHOLD:-0.9}
RESULTS_DIR=${RESULTS_DIR:-./results}
ARM_TAG=${ARM_TAG:-}
EXTRA_ARGS=${EXTRA_ARGS:-}
PYTHON=${PYTHON:-python3}
[[ "${DRY_RUN:-0}" == 1 ]] || mkdir -p "$RESULTS_DIR"  # a dry run writes nothing

# threshold of an arm: the same for all unless PAPER_THRESHOLDS=1 (then FOCUS 0.8, others 0.9)
arm_threshold() {
  if [[ "${PAPER_THRESHOLDS:-0}" == 1 ]]; then [[ "$1" == focus* ]] && echo 0.8 || echo 0.9
  else echo "$THRESHOLD"; fi
}

# arm_flags ARM [FIELD=VALUE ...]: the arm's engine flags, from the one arm table (benchmark/arms)
arm_flags() { "$PYTHON" "$BENCH_DIR/arms/__init__.py" flags "$@"; }

# run_arm ARM DATASET MODEL BLOCK_LENGTH [extra profile_throughput args...]
run_arm() {
  local base="$1" arm="$1$ARM_TAG" dataset="$2" model="$3" block="$4"; shift 4
  local steps=${DENOISING_STEPS:-$block}
  local eager=() guard=(--repeat-block-detect --repeat-block-window 32)
  [[ "${EAGER_MODE:-0}" == 1 ]] && eager=(--eager-mode)
  [[ "${REPEAT_GUARD:-1}" == 0 ]] && guard=()  # 0 or 1: checked at the top
  local common=(--backend pytorch "${eager[@]}" --skip-tokenize --skip-detokenize --use-uvloop
                --num-prompts "$NUM_PROMPTS" --max-new-tokens "$MAX_NEW_TOKENS"
                --dllm-block-length "$block" --dllm-denoising-steps "$steps"
                --dllm-unmasking-strategy "$UNMASKING" --dllm-confidence-threshold "$(arm_threshold "$base")"
                --dllm-track "${guard[@]}"
                --arm "$arm" --output-dir "$RESULTS_DIR")
  local tag; tag="${arm}_$(basename "${model%/}")"
  local cmd bs levels=("$BATCH_SIZES")
  [[ "${ONE_ENGINE:-0}" == 1 ]] || read -r -a levels <<< "$BATCH_SIZES"
  for bs in "${levels[@]}"; do
    local log="$RESULTS_DIR/${tag}.log"
    [[ "${ONE_ENGINE:-0}" == 1 ]] || log="$RESULTS_DIR/${tag}_bs${bs}.log"
    # $bs: all levels in one word under ONE_ENGINE=1; $EXTRA_ARGS: several arguments
    # shellcheck disable=SC2086
    cmd=("$PYTHON" "$BENCH_DIR/profile_throughput.py" "$dataset" "$model" --concurrency $bs "${common[@]}" "$@" $EXTRA_ARGS)
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
      # the plugin's experiment switches travel in the environment: shown as an env prefix
      local switches=() name
      for name in $(compgen -e | grep '^LMDEPLOY_FOCUS_' | sort); do switches+=("$name=${!name}"); done
      echo "DRY_RUN: ${switches[*]:+env $(printf '%q ' "${switches[@]}")}$(printf '%q ' "${cmd[@]}")"
    else
      "${cmd[@]}" 2>&1 | tee "$log"
    fi
  done
}
