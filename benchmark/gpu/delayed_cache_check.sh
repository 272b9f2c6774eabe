#!/usr/bin/env bash
# GPU check of delayed cache (issue 3): bash benchmark/gpu/delayed_cache_check.sh OUT_DIR [ARCH] [extra args]
exec bash "$(dirname "$0")/arm_check.sh" delayed_cache_check "$@"
