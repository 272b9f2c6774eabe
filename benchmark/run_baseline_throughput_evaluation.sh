#!/usr/bin/env bash
# Stock LMDeploy DLLM decoding (no delayed cache, no FOCUS) at batch sizes 32/64/128/256.
#   bash benchmark/run_baseline_throughput_evaluation.sh [dataset] [model]
# dataset defaults to the synthetic ShareGPT sample in benchmark/data, model to JetLM/SDAR-8B-Chat-b32.
# Settings: benchmark/driver_common.sh (environment overrides listed there). Logs/JSON: $RESULTS_DIR.
source "$(dirname "${BASH_SOURCE[0]}")/driver_common.sh"
DATASET=${1:-$SAMPLE_DATASET}
MODEL=${2:-JetLM/SDAR-8B-Chat-b32}
run_arm stock "$DATASET" "$MODEL" "${BLOCK_LENGTH:-32}"
