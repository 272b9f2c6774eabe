#!/usr/bin/env bash
# Block sizes 16 and 64 (SDAR-8B-Chat-b16 / -b64) at batch sizes 32/64/128/256.
#   bash benchmark/run_block_size_comparison.sh [dataset]
# MODEL_PREFIX=JetLM/SDAR-8B-Chat (the -b<N> suffix is appended), BLOCK_SIZES="16 64", ALPHA (default: the arm table's α, 1.5).
# Denoising steps follow the block length (DENOISING_STEPS_PER_BLOCK_DIV=4 gives L/4 steps instead).
# ARMS="stock focus-importance" picks the arms, in order, from: stock, delayed-cache,
# focus-importance, focus-leftmost (their flags: the arm table, benchmark/arms). Settings: benchmark/driver_common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/driver_common.sh"
DATASET=${1:-$SAMPLE_DATASET}
MODEL_PREFIX=${MODEL_PREFIX:-JetLM/SDAR-8B-Chat}
for ARM in ${ARMS:-stock focus-importance}; do
  case $ARM in stock|delayed-cache|focus-importance|focus-leftmost) ;;
    *) echo "unknown arm $ARM (stock, delayed-cache, focus-importance, focus-leftmost)" >&2; exit 2 ;;
  esac
done
for L in ${BLOCK_SIZES:-16 64}; do
  if [[ -n "${DENOISING_STEPS_PER_BLOCK_DIV:-}" ]]; then export DENOISING_STEPS=$((L / DENOISING_STEPS_PER_BLOCK_DIV)); fi
  for ARM in ${ARMS:-stock focus-importance}; do
    MORE=()
    [[ $ARM == focus-* && -n ${ALPHA:-} ]] && MORE=(dllm_focus_alpha="$ALPHA")  # else the arm table's α
    FLAGS=$(arm_flags "$ARM" "${MORE[@]}")
    # shellcheck disable=SC2086  # the flags are words
    run_arm "$ARM" "$DATASET" "$MODEL_PREFIX-b$L" "$L" $FLAGS
  done
done
