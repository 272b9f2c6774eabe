#!/usr/bin/env bash
# Block sizes 16 and 64 (SDAR-8B-Chat-b16 / -b64): stock and FOCUS arms at batch sizes 32/64/128/256.
#   bash benchmark/run_block_size_comparison.sh [dataset]
# MODEL_PREFIX=JetLM/SDAR-8B-Chat (the -b<N> suffix is appended), BLOCK_SIZES="16 64", ALPHA=1.5.
# Denoising steps follow the block length (DENOISING_STEPS_PER_BLOCK_DIV=4 gives L/4 steps instead).
# ARMS="stock focus-importance" picks the arms.
source "$(dirname "${BASH_SOURCE[0]}")/driver_common.sh"
DATASET=${1:-$SAMPLE_DATASET}
MODEL_PREFIX=${MODEL_PREFIX:-JetLM/SDAR-8B-Chat}
for L in ${BLOCK_SIZES:-16 64}; do
  if [[ -n "${DENOISING_STEPS_PER_BLOCK_DIV:-}" ]]; then export DENOISING_STEPS=$((L / DENOISING_STEPS_PER_BLOCK_DIV)); fi
  for ARM in ${ARMS:-stock focus-importance}; do
    case $ARM in
      stock) run_arm stock "$DATASET" "$MODEL_PREFIX-b$L" "$L" ;;
      focus-importance) run_arm focus-importance "$DATASET" "$MODEL_PREFIX-b$L" "$L" \
          --dllm-enable-delayed-cache --dllm-enable-focus --dllm-focus-alpha "${ALPHA:-1.5}" ;;
      *) echo "unknown arm $ARM (stock, focus-importance)" >&2; exit 2 ;;
    esac
  done
done
