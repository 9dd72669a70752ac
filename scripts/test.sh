#!/usr/bin/env bash
# Sets up ./.venv with the dev extra and runs the test suite. Extra arguments go to pytest,
# e.g. `scripts/test.sh -m "slow or not slow"` for the full suite CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh dev
exec .venv/bin/python -m pytest "$@"
