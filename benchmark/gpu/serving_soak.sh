#!/usr/bin/env bash
# Serving soak (checks/serving_soak_check.py) through the real api_server, stock then --focus, from the repo root:
#   bash benchmark/gpu/serving_soak.sh OUT_DIR [serving_soak_check.py arguments]
# Default: the committed tiny model, 1,000 requests at concurrency 64. The servers inherit PYTHONPATH (this
# checkout first) and find `lmdeploy` on PATH (/tmp/site/bin). Keeps the last 60 kB of each server's log.
set -uo pipefail
OUT=${1:?OUT_DIR}; shift || true
mkdir -p "$OUT"
source benchmark/gpu/common.sh
gpu_setup > "$OUT/setup.log" 2>&1  # not in a pipe: its exports must reach this shell
export PATH=/tmp/site/bin:$PATH
[[ $# -gt 0 ]] || set -- --both --requests 1000 --concurrency 64
timeout "${SOAK_S:-420}" python3 checks/serving_soak_check.py --model models/tiny-sdar-5m-b32 --out "$OUT/soak.json" "$@" \
  > "$OUT/soak.log" 2>&1
rc=$?; echo "serving_soak_check rc=$rc"; tail -25 "$OUT/soak.log"
for log in "$OUT"/*.server.log; do [[ -f $log ]] && { tail -c 60000 "$log" > "$log.tail"; rm "$log"; }; done
exit "$rc"
