#!/usr/bin/env bash
# usage: bash scripts/setup_env.sh [EXTRA ...]
#
# Creates ./.venv (if missing) and installs the project into it, editable, with the extras
# given as arguments (those of setup.cfg's [options.extras_require]: dev, hf, export, ...).
# PyTorch first, pinned, so nothing else pulls a different build:
#
#   bash scripts/setup_env.sh dev                     # the CPU build of torch 2.13.0
#   W2V_TORCH_INDEX=https://download.pytorch.org/whl/cu126 bash scripts/setup_env.sh
#                                                     # a GPU build, from that index
#
# The CPU build is torch==2.13.0+cpu: taken from the local wheel cache when there is one,
# else from PyTorch's CPU index (PyPI's plain `torch` is the multi-GB CUDA build).
# The first run downloads and installs PyTorch and the dependencies (it is part of the
# ~5 minutes scripts/demo.sh takes from a fresh clone, README.md); later runs only let pip
# check what is there.
#
# Environment: PYTHON, the interpreter that creates .venv (default python3);
# W2V_TORCH_INDEX, a PyTorch wheel index for another build (default: the CPU build).
# -h, --help prints this and does nothing else.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
help_asked "$@"
cd "$(dirname "$0")/.."
known=$(awk '/^\[/ { section = $0; next }
             section == "[options.extras_require]" && /^[A-Za-z0-9_-]+ *=/ { sub(/ *=.*/, ""); print }' setup.cfg)
for arg in "$@"; do  # checked before anything starts: pip only warns about an unknown extra
    case $arg in -*) refuse "unknown option $arg" ;; esac
    grep -qx -- "$arg" <<<"$known" || refuse "unknown extra '$arg'; setup.cfg has: $(paste -sd ' ' <<<"$known")"
done
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
