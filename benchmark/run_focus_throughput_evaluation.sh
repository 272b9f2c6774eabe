#!/usr/bin/env bash
# FOCUS (delayed cache + token eviction) at batch sizes 32/64/128/256.
#   bash benchmark/run_focus_throughput_evaluation.sh [dataset] [model] [alpha] [policy]
# policy: which masked tokens FOCUS keeps (--dllm-focus-policy): importance (the paper's importance
# delta, default) or leftmost; also settable as FOCUS_POLICY=leftmost. The arm is labelled
# "focus-<policy>" (plus ARM_TAG, then "-alpha<alpha>" when alpha is not the default 1.5: a rerun with another
# alpha writes its own results instead of overwriting the default's). Same confidence threshold as the baseline unless PAPER_THRESHOLDS=1
# (FOCUS 0.8 vs 0.9, the paper's setting). Settings: benchmark/driver_common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/driver_common.sh"
DATASET=${1:-$SAMPLE_DATASET}
MODEL=${2:-JetLM/SDAR-8B-Chat-b32}
ALPHA=${3:-1.5}
POLICY=${4:-${FOCUS_POLICY:-importance}}
case $POLICY in
  importance|leftmost) ;;
  *) echo "unknown FOCUS policy '$POLICY' (importance, leftmost)" >&2; exit 2 ;;
esac
FLAGS=$(arm_flags "focus-$POLICY" dllm_focus_alpha="$ALPHA")
# -alpha<alpha> unless it is the arm table's default (compared as numbers: 1.50 is the default too)
ARM_TAG+=$("$PYTHON" - "$BENCH_DIR" "$ALPHA" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from arms import FOCUS_ALPHA
try:
    default = float(sys.argv[2]) == FOCUS_ALPHA
except ValueError:  # auto, or a value profile_throughput refuses by name
    default = False
print('' if default else f'-alpha{sys.argv[2]}')
PY
)
# shellcheck disable=SC2086  # the flags are words
run_arm "focus-$POLICY" "$DATASET" "$MODEL" "${BLOCK_LENGTH:-32}" $FLAGS
