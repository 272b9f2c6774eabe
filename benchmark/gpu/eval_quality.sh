#!/usr/bin/env bash
# Quality evaluation of a committed tiny model through the engine (issue 6):
#   bash benchmark/gpu/eval_quality.sh OUT_DIR [MODEL_DIR] [extra eval_quality args]
set -uo pipefail
OUT=${1:?OUT_DIR}; MODEL=${2:-models/tiny-sdar-5m-b32}; shift $(($# < 2 ? $# : 2))
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl 2>&1 | tail -1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --break-system-packages .whl/lmdeploy_focus-*.whl .whl/lmdeploy_focus_dev-*.whl 2>&1 | tail -1
python3 benchmark/eval_quality.py benchmark/data/tiny_tasks_heldout.jsonl "$MODEL" --backend engine --eager-mode \
  --concurrency 128 --out-dir "$OUT" --arms stock delayed_exact delayed_fast focus_a1.0 focus_a1.5 focus_a2 focus_a3 \
  focus_leftmost shadow --thresholds 0.9 0.7 "$@" 2>&1 | grep -v "instantiate a model of type" | tee "$OUT/eval_quality.log" | tail -40
