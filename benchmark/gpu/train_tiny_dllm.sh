#!/usr/bin/env bash
# Train, export and evaluate the tiny SDAR block-diffusion model on one GPU (issue 6):
#   bash benchmark/gpu/train_tiny_dllm.sh OUT_DIR [5m|25m] [extra train_tiny_dllm args]
# Offline: needs the carried .gpu wheelhouse (lmdeploy, for the reference decode loop) and .data/tiny_dllm
# (python -m lmdeploy_focus_dev.tools.tiny_dllm.prepare_kjv, run where apt works); runs the checkout itself.
# Training plans its step count from the measured speed (--steps auto, recorded in train_log.json for an
# exact rerun) within --minutes 6; the eval gets 1.5 min. Comes back in OUT_DIR (at most 7 files): the log,
# train_log / eval JSONs, and the checkpoint folder as a tar in <= 15 MiB parts (cat parts | tar x).
set -uo pipefail
OUT=${1:?OUT_DIR}; SIZE=${2:-5m}; shift $(($# < 2 ? $# : 2))
DATA=.data/tiny_dllm; WORK=/tmp/tiny_dllm; NAME=tiny-sdar-$SIZE-b32
mkdir -p "$OUT"
[ -f $DATA/kjv_train.txt ] || { echo "$DATA missing: prepare it with prepare_kjv and carry it"; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl 2>&1 | tail -1
export PYTHONPATH=$PWD:$PWD/dev:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# leave ~15 s of the 600 s command for packing, whatever happens in training
timeout $((585 - SECONDS)) python3 -m lmdeploy_focus_dev.tools.train_tiny_dllm --size "$SIZE" --out $WORK --data $DATA \
  --seed 0 --steps auto --minutes 6 --eval-minutes 1.5 "$@" 2>&1 | grep -v "instantiate a model of type" \
  | tee "$OUT/train_$SIZE.log"
rc=${PIPESTATUS[0]}
for f in train_log.json eval.json; do [ -f $WORK/$NAME/$f ] && cp $WORK/$NAME/$f "$OUT/${NAME}_$f"; done
[ -f $WORK/$NAME/config.json ] && tar -C $WORK -cf - $NAME | split -b 15m -d - "$OUT/$NAME.tar.part"
ls -l "$OUT"
exit $rc
