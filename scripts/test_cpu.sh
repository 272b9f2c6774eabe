#!/usr/bin/env bash
# Install the CPU test environment from scratch and run the CPU suite (the README's test command).
#   bash scripts/test_cpu.sh [pytest args]
# Uses the active virtualenv, or creates .venv-cpu/ next to this repo's sources. No CUDA wheels:
# torch is the 2.13.0 CPU build and lmdeploy / xgrammar go in without their (CUDA) dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${VIRTUAL_ENV:-}" ]; then
  "${PYTHON:-python3}" -m venv .venv-cpu
  # shellcheck disable=SC1091
  . .venv-cpu/bin/activate
fi

pip() { python -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade pip
pip install -q torch==2.13.0
pip install -q --no-deps -r requirements/lmdeploy_nodeps.txt
pip install -q -r requirements/test_cpu.txt
# A real (non-editable) install: the suite checks the .pth activation of the installed plugin.
pip install -q --no-deps --force-reinstall .

export LMDEPLOY_FOCUS_CACHE="${LMDEPLOY_FOCUS_CACHE:-$PWD/.venv-cpu-cache}"
python -m pytest -q -p no:cacheprovider "$@" tests
