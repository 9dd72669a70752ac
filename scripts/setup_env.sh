#!/usr/bin/env bash
# Creates ./.venv (if missing) and installs the project into it, with the extras given
# as arguments (e.g. "dev"). torch is pinned in setup.cfg; installing it first makes pip
# take the CPU wheel that lies on disk instead of resolving a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
extras=$(IFS=,; echo "$*")
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
