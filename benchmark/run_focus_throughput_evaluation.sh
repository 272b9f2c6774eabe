#!/usr/bin/env bash
# FOCUS (delayed cache + importance-delta eviction) at batch sizes 32/64/128/256.
#   bash benchmark/run_focus_throughput_evaluation.sh [dataset] [model] [alpha]
# Same confidence threshold as the baseline unless PAPER_THRESHOLDS=1 (FOCUS 0.8 vs 0.9, the paper's
# setting). While FOCUS is not implemented the engine refuses the flags and every run is recorded
# as missing, with the engine's message.
source "$(dirname "${BASH_SOURCE[0]}")/driver_common.sh"
DATASET=${1:-$SAMPLE_DATASET}
MODEL=${2:-JetLM/SDAR-8B-Chat-b32}
ALPHA=${3:-1.5}
run_arm focus-importance "$DATASET" "$MODEL" "${BLOCK_LENGTH:-32}" \
  --dllm-enable-delayed-cache --dllm-enable-focus --dllm-focus-alpha "$ALPHA"
