#!/usr/bin/env bash
# Delayed cache alone (no FOCUS eviction) on SDAR-8B-Chat-b32 at batch sizes 32/64/128/256.
#   bash benchmark/run_sdar_delayed_cache_benchmark.sh [dataset]
# MODEL=... overrides the checkpoint. Recorded as missing while the engine refuses the flag.
source "$(dirname "${BASH_SOURCE[0]}")/driver_common.sh"
DATASET=${1:-$SAMPLE_DATASET}
MODEL=${MODEL:-JetLM/SDAR-8B-Chat-b32}
run_arm delayed-cache "$DATASET" "$MODEL" "${BLOCK_LENGTH:-32}" --dllm-enable-delayed-cache
