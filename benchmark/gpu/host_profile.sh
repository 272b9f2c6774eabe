#!/usr/bin/env bash
# Host-side profile of timed throughput waves on the lent GPU (issue 14: where a step's wall time goes):
#   bash benchmark/gpu/host_profile.sh OUT_DIR [ARM ...]
# ARM: stock | importance | leftmost | importance-dynamic (default: all four), random SDAR-8B b32, bs ${BS:-256},
# in 256 / out ${OUT_LEN:-128}, CUDA graphs, no --dllm-track (what users run). One engine per arm.
# MODEL=DIR profiles that checkpoint instead (e.g. models/tiny-sdar-5m-b32, whose steps are host-bound).
# Writes OUT_DIR/prof_ARM.json (benchmark/host_profile.py) and the profile_throughput JSON/CSV per arm.
set -uo pipefail
OUT=${1:?OUT_DIR}; shift || true
ARMS=("$@"); [[ ${#ARMS[@]} -gt 0 ]] || ARMS=(stock importance leftmost importance-dynamic)
mkdir -p "$OUT"
source benchmark/gpu/common.sh
gpu_setup
SDAR=${MODEL:-/tmp/ckpt/SDAR-8B-Chat-b32}
[[ -n ${MODEL:-} ]] || sdar8b_checkpoint "$SDAR"
BS=${BS:-256}; OUT_LEN=${OUT_LEN:-128}
COMMON=(random "$SDAR" --concurrency "$BS" --prompts-per-slot 1 --input-len 256 --output-len "$OUT_LEN"
        --max-new-tokens "$OUT_LEN" --ignore-eos --skip-tokenize --skip-detokenize --dllm-block-length 32
        --dllm-confidence-threshold 0.9 --output-dir "$OUT/throughput" --fast-exit)
STATIC=(--dllm-unmasking-strategy low_confidence_static --dllm-denoising-steps 8)
arm_flags() { python3 benchmark/arms/__init__.py flags "$@"; }  # the one arm table's flags
failed=0
for arm in "${ARMS[@]}"; do
  case $arm in
    stock) args=("${STATIC[@]}") ;;
    # shellcheck disable=SC2046  # the flags are words
    importance|leftmost) args=("${STATIC[@]}" $(arm_flags "focus-$arm")) ;;
    # shellcheck disable=SC2046
    importance-dynamic) args=(--dllm-unmasking-strategy low_confidence_dynamic $(arm_flags focus-importance)) ;;
    stock-dynamic) args=(--dllm-unmasking-strategy low_confidence_dynamic) ;;
    *) echo "unknown arm $arm" >&2; exit 2 ;;
  esac
  start=$(date +%s)
  python3 benchmark/host_profile.py --out "$OUT/prof_$arm.json" -- "${COMMON[@]}" "${args[@]}" --arm "$arm" \
    > "$OUT/prof_$arm.log" 2>&1
  rc=$?; (( rc )) && failed=$rc
  echo "$arm rc=$rc $(( $(date +%s) - start )) s"; grep -E "output_throughput|tok/s|Error|Traceback" "$OUT/prof_$arm.log" | tail -3
done
exit "$failed"  # the last failed arm's status (0: all ran)
