#!/usr/bin/env bash
# Install the CPU test environment from scratch and run the CPU suite (the README's test command).
#   bash scripts/test_cpu.sh [pytest args]
# Uses the active virtualenv, or creates .venv-cpu/ next to this repo's sources (activate it afterwards
# with `. .venv-cpu/bin/activate` to run pytest or the tools yourself). No CUDA wheels: torch is the
# 2.13.0 CPU build and lmdeploy / xgrammar go in without their (CUDA) dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${VIRTUAL_ENV:-}" ]; then
  "${PYTHON:-python3}" -m venv .venv-cpu
  # shellcheck disable=SC1091
  . .venv-cpu/bin/activate
elif python -c "import sys, torch; sys.exit(torch.version.cuda is None)" 2>/dev/null; then
  # the CPU torch below would replace it, and the GPU tests of that environment would then all skip
  echo "test_cpu.sh: error: the active virtualenv ($VIRTUAL_ENV) has a CUDA build of torch, which this script" \
    "would replace with the CPU build: deactivate it (the script then makes .venv-cpu/)" >&2
  exit 2
fi

pip() { python -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade pip

# torch 2.13.0, CPU build. A plain `pip install torch==2.13.0` gets PyPI's Linux wheel, the CUDA build
# (several GB of nvidia-* wheels), so ask for the CPU build explicitly: the `+cpu` wheel where a
# configured index or wheel folder has it, else PyTorch's CPU index (macOS wheels there carry no +cpu).
TORCH_VERSION=2.13.0
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
if python -c "import sys, torch; sys.exit(torch.__version__ != '$TORCH_VERSION+cpu')" 2>/dev/null; then
  echo "test_cpu.sh: torch $TORCH_VERSION+cpu already installed"
elif pip install -q "torch==$TORCH_VERSION+cpu" 2>/dev/null; then
  echo "test_cpu.sh: installed torch $TORCH_VERSION+cpu"
elif pip install -q --index-url "$TORCH_CPU_INDEX" "torch==$TORCH_VERSION"; then
  echo "test_cpu.sh: installed torch $TORCH_VERSION (CPU) from $TORCH_CPU_INDEX"
else
  echo "test_cpu.sh: error: cannot install the CPU build of torch $TORCH_VERSION (tried torch==$TORCH_VERSION+cpu" \
    "from the configured indexes, then $TORCH_CPU_INDEX)" >&2
  exit 1
fi

# What lmdeploy and the suite import, then lmdeploy / xgrammar without their dependencies (their CUDA
# pins: torch<=2.12.1, triton, nvidia-*). pip's resolver would report those unmet pins as an
# 'ERROR: pip's dependency resolver ...' block on every install into this environment; they are
# expected (see README, Test), so the check is switched off here.
pip install -q --no-warn-conflicts -r requirements/test_cpu.txt
pip install -q --no-deps -r requirements/lmdeploy_nodeps.txt
# Real (non-editable) installs: the suite checks the .pth activation of the installed plugin. The runtime
# (.) and the development package (dev/: oracle, CPU harness, tools; the suite imports it).
pip install -q --no-deps --force-reinstall . ./dev

export LMDEPLOY_FOCUS_CACHE="${LMDEPLOY_FOCUS_CACHE:-$PWD/.venv-cpu-cache}"
# tests/ unless the arguments name a test path themselves (they were run on top of the whole suite)
paths=(tests)
for arg in "$@"; do [[ $arg == tests* || $arg == */tests/* ]] && paths=() && break; done
python -m pytest -q -p no:cacheprovider "$@" "${paths[@]}"
