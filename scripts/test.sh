#!/usr/bin/env bash
# usage: bash scripts/test.sh [PYTEST_ARGUMENT ...]
#
# Sets up ./.venv with the dev extra (bash scripts/setup_env.sh dev) and runs the test suite
# in it. Every argument but -h/--help goes to pytest, e.g.
#
#   bash scripts/test.sh                          # the default suite: a few minutes on 2 cores
#   bash scripts/test.sh -m "slow or not slow"    # plus the slow integration tests, as CI runs
#   bash scripts/test.sh tests/data -x            # one directory, stop at the first failure
#
# pytest's own help: .venv/bin/python -m pytest --help (once .venv exists).
# The first run installs PyTorch and the dev dependencies first (see setup_env.sh --help).
#
# Environment: PYTHON and W2V_TORCH_INDEX for the install (see bash scripts/setup_env.sh --help).
# -h, --help prints this and does nothing else.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
help_asked "$@"
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh dev
exec .venv/bin/python -m pytest "$@"
