#!/usr/bin/env bash
# usage: bash scripts/demo.sh [HYDRA_OVERRIDE ...]
#
# The demo: pretrain a small wav2vec 2.0 on real speech on this CPU, in about 5 minutes
# from a fresh clone (install and download included; README.md has the measurement).
#
#   bash scripts/demo.sh                      # everything, from a fresh checkout
#   bash scripts/demo.sh optim.max_update=400 # extra arguments are Hydra overrides
#
# 1. installs the project into ./.venv with scripts/setup_env.sh (skipped when W2V_PYTHON
#    names a ready interpreter);
# 2. prepares the Asterisk prompts corpus (5 languages, ~1.8 h; Debian packages) in
#    $W2V_DATA (default data/asterisk), cached across runs;
# 3. trains configs/demo.yaml into $W2V_RUN (default runs/demo), printing a progress line
#    every 10 updates; rerunning resumes, so delete the directory to start over;
# 4. prints a verdict on the run's health and writes $W2V_RUN/curves.png next to the
#    TensorBoard logs in $W2V_RUN/tb. Exit status 1 if the run did not learn.
#
# Environment: W2V_PYTHON, W2V_DATA, W2V_RUN as above; OMP_NUM_THREADS (default 2);
# PYTHON and W2V_TORCH_INDEX for the install (see bash scripts/setup_env.sh --help).
# -h, --help prints this and does nothing else.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
help_asked "$@"
for arg in "$@"; do  # checked before anything starts: Hydra would only say so after the install
    case $arg in
        -*) refuse "unknown option $arg" ;;
        *=*|~*) ;;
        *) refuse "$arg is not a Hydra override (key=value, +key=value, ~key)" ;;
    esac
done
cd "$(dirname "$0")/.."
DATA=${W2V_DATA:-data/asterisk}
RUN=${W2V_RUN:-runs/demo}

python_env

echo "== preparing the speech corpus in $DATA"
"$PY" scripts/prepare_asterisk.py --out "$DATA"

echo "== pretraining configs/demo.yaml into $RUN"
start=$(date +%s)
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$PY" scripts/train.py --config-name demo \
    data.manifest_dir="$DATA" run_dir="$RUN" "$@"
echo "== trained in $(( $(date +%s) - start )) s"

# The run printed its verdict above; this draws the curves and exits 1 if it is not healthy.
"$PY" -m wav2vec2.train.plots "$RUN" --curves-only
