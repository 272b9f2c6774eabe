#!/usr/bin/env bash
# Delayed cache alone (no FOCUS eviction) on SDAR-8B-Chat-b32 at batch sizes 32/64/128/256.
#   bash benchmark/run_sdar_delayed_cache_benchmark.sh [dataset] [model]
# The model defaults to $MODEL, else JetLM/SDAR-8B-Chat-b32. Arm "delayed-cache" (plus ARM_TAG), the
# engine's default commit mode (exact; EXTRA_ARGS="--dllm-delayed-cache-commit fast" for the fork's).
# Settings: benchmark/driver_common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/driver_common.sh"
DATASET=${1:-$SAMPLE_DATASET}
MODEL=${2:-${MODEL:-JetLM/SDAR-8B-Chat-b32}}
# an assignment of its own, so that a failed lookup stops the driver (inside run_arm's arguments it ran stock)
FLAGS=$(arm_flags delayed-cache)
# shellcheck disable=SC2086  # the flags are words
run_arm delayed-cache "$DATASET" "$MODEL" "${BLOCK_LENGTH:-32}" $FLAGS
