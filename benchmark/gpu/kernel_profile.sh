#!/usr/bin/env bash
# GPU kernels by name, FOCUS against stock at a small batch (issue 14: where a bs 1-4 FOCUS step's extra
# ~1 ms goes), from the repo root on the lent GPU:
#   bash benchmark/gpu/kernel_profile.sh OUT_DIR
# Random SDAR-8B b32 (MODEL=DIR for another checkpoint), bs ${BS:-1}, in 256 / out ${OUT_LEN:-64}, static 4 tok/step,
# CUDA graphs (EAGER=1: eager), one engine per arm, upstream's agent profiler (LMDEPLOY_PROFILE_CUDA=1) over the
# engine's life (warm-up wave and timed wave: BS * (32 + OUT_LEN) generated tokens, the same in both arms).
# Writes OUT_DIR/kernels_ARM.json per arm and OUT_DIR/kernels_importance_minus_stock.json (benchmark/kernel_table.py,
# per generated token; static unmasking takes 9 engine steps per 32 tokens in both arms). Traces stay in /tmp.
set -uo pipefail
OUT=${1:?OUT_DIR}
mkdir -p "$OUT"
source benchmark/gpu/common.sh
gpu_setup
SDAR=${MODEL:-/tmp/ckpt/SDAR-8B-Chat-b32}
[[ -n ${MODEL:-} ]] || sdar8b_checkpoint "$SDAR"
BS=${BS:-1}; OUT_LEN=${OUT_LEN:-64}; TOKENS=$(( BS * (32 + OUT_LEN) ))
MODE=(); [[ ${EAGER:-0} == 1 ]] && MODE=(--eager-mode)
COMMON=(random "$SDAR" --concurrency "$BS" --prompts-per-slot 1 --input-len 256 --output-len "$OUT_LEN"
        --max-new-tokens "$OUT_LEN" --ignore-eos --skip-tokenize --skip-detokenize --dllm-block-length 32
        --dllm-confidence-threshold 0.9 --dllm-unmasking-strategy low_confidence_static --dllm-denoising-steps 8
        --warmup-tokens 32 --output-dir /tmp/kernel_profile/throughput "${MODE[@]}")
failed=0
for arm in stock importance; do
  # shellcheck disable=SC2207  # the arm table's flags are words
  args=(); [[ $arm == importance ]] && args=($(python3 benchmark/arms/__init__.py flags focus-importance))
  rm -f /tmp/kernel_profile/trace_${arm}_*
  mkdir -p /tmp/kernel_profile
  LMDEPLOY_PROFILE_CUDA=1 LMDEPLOY_PROFILE_OUT_PREFIX=/tmp/kernel_profile/trace_${arm}_ \
    python3 benchmark/profile_throughput.py "${COMMON[@]}" "${args[@]}" --arm "$arm" > "$OUT/kernels_$arm.log" 2>&1
  rc=$?; (( rc )) && failed=$rc
  echo "$arm rc=$rc"; grep -E "Profiler .* dump|Error|Traceback" "$OUT/kernels_$arm.log" | tail -3
  trace=$(ls /tmp/kernel_profile/trace_${arm}_* 2>/dev/null | head -1)
  [[ -n $trace ]] && python3 benchmark/kernel_table.py "$trace" --per "$TOKENS" --top 60 --json "$OUT/kernels_$arm.json" | head -3
done
python3 benchmark/kernel_table.py /tmp/kernel_profile/trace_importance_* --minus /tmp/kernel_profile/trace_stock_* \
  --per "$TOKENS" --top 60 --json "$OUT/kernels_importance_minus_stock.json" | head -40
exit "$failed"  # the last failed arm's status (0: all ran)
