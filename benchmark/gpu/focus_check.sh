#!/usr/bin/env bash
# GPU check of FOCUS (issue 4): bash benchmark/gpu/focus_check.sh OUT_DIR [ARCH] [extra args]
exec bash "$(dirname "$0")/arm_check.sh" focus_check "$@"
