#!/usr/bin/env bash
# Creates ./.venv (if missing) and installs the project into it, with the extras given as
# arguments (e.g. "dev"). PyTorch first, pinned, so nothing else pulls a different build:
#
#   bash scripts/setup_env.sh dev                     # the CPU build of torch 2.13.0
#   W2V_TORCH_INDEX=https://download.pytorch.org/whl/cu126 bash scripts/setup_env.sh
#                                                     # a GPU build, from that index
#
# The CPU build is torch==2.13.0+cpu: taken from the local wheel cache when there is one,
# else from PyTorch's CPU index (PyPI's plain `torch` is the multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=2.13.0
if [ ! -x .venv/bin/python ]; then
    echo "-- creating .venv with $("$PY" --version)"
    "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --progress-bar on)
extras=$(IFS=,; echo "$*")

"${PIP[@]}" -q --upgrade pip
if [ -n "${W2V_TORCH_INDEX:-}" ]; then
    echo "-- torch $TORCH_VERSION from $W2V_TORCH_INDEX"
    "${PIP[@]}" "torch==$TORCH_VERSION" --index-url "$W2V_TORCH_INDEX" --extra-index-url https://pypi.org/simple
elif .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__ != '$TORCH_VERSION+cpu')" 2>/dev/null; then
    echo "-- torch $TORCH_VERSION+cpu already installed"
else
    echo "-- torch $TORCH_VERSION, CPU build (set W2V_TORCH_INDEX for a GPU build)"
    if ! "${PIP[@]}" "torch==$TORCH_VERSION+cpu" 2>/dev/null; then
        "${PIP[@]}" "torch==$TORCH_VERSION+cpu" --index-url https://download.pytorch.org/whl/cpu \
            --extra-index-url https://pypi.org/simple
    fi
fi
echo "-- the project${extras:+ with [$extras]} (numpy, soundfile, hydra, tensorboard, ...)"
"${PIP[@]}" -e ".${extras:+[$extras]}"
echo "-- .venv ready: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
