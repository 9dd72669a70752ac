#!/usr/bin/env bash
# usage: bash scripts/finetune_demo.sh      (no arguments; the environment below adjusts it)
#
# Does pretraining make a little labelled speech go further? The paper's claim at this
# project's scale, on real speech, on a CPU: about half an hour on 2 cores (31.5 min
# measured, docs/finetuning.md).
#
# 1. installs the project into ./.venv with scripts/setup_env.sh (skipped when W2V_PYTHON
#    names a ready interpreter);
# 2. prepares the Asterisk prompts (5 languages; Debian packages) in $W2V_DATA (default
#    data/asterisk) and the low-resource splits in $W2V_DATA-lowres: English test (4 min)
#    and dev (2 min) prompts, a 10-minute English training split with none of their
#    sentences, and every other utterance as unlabelled pretraining audio
#    (scripts/prepare_asterisk.py --help says more);
# 3. pretrains configs/demo.yaml on that unlabelled audio (all five languages), 5,000
#    updates instead of the demo's 1,200;
# 4. fine-tunes configs/ctc_demo.yaml on the 10 English minutes twice, side by side on the
#    two cores and with the same updates: from the pretrained model, and from random weights;
# 5. scores each run's best checkpoint (by dev CER) on the test prompts and prints both.
#
# Environment: W2V_PYTHON, W2V_DATA as above; W2V_RUN, where the runs go (default
# runs/finetune_demo; rerunning resumes or reuses them); W2V_PRETRAIN_UPDATES (default
# 5000) and W2V_FINETUNE_UPDATES (default 8000) shorten it (the tests run a few of each);
# PYTHON and W2V_TORCH_INDEX for the install (see bash scripts/setup_env.sh --help).
# -h, --help prints this and does nothing else.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
takes_no_arguments "$@"
cd "$(dirname "$0")/.."
DATA=${W2V_DATA:-data/asterisk}
SPLITS=${DATA}-lowres
RUN=${W2V_RUN:-runs/finetune_demo}
PRETRAIN_UPDATES=${W2V_PRETRAIN_UPDATES:-5000}
FINETUNE_UPDATES=${W2V_FINETUNE_UPDATES:-8000}
start=$(date +%s)

python_env

echo "== preparing the corpus in $DATA and the low-resource splits in $SPLITS"
"$PY" scripts/prepare_asterisk.py --out "$DATA" --finetune-splits "$SPLITS"

echo "== pretraining configs/demo.yaml for $PRETRAIN_UPDATES updates on the unlabelled audio ($SPLITS/pretrain)"
OMP_NUM_THREADS=2 "$PY" scripts/train.py --config-name demo data.manifest_dir="$SPLITS/pretrain" \
    run_dir="$RUN/pretrain" optim.max_update="$PRETRAIN_UPDATES" train.validate_every=250 checkpoint.save_every=1000

echo "== fine-tuning configs/ctc_demo.yaml on 10 English minutes, side by side: from the pretrained"
echo "   model (shown here) and from random weights (logging to $RUN/scratch.log)"
finetune() {  # $1 = run name, $2 = task.init
    OMP_NUM_THREADS=1 "$PY" scripts/train.py --config-name ctc_demo data.manifest_dir="$SPLITS/finetune_en" \
        run_dir="$RUN/$1" task.init="$2" optim.max_update="$FINETUNE_UPDATES"
}
mkdir -p "$RUN"
finetune scratch "" > "$RUN/scratch.log" 2>&1 &
scratch=$!
status=0
finetune pretrained "$RUN/pretrain/checkpoint_best.pt" 2>&1 | tee "$RUN/pretrained.log" || status=$?
wait $scratch || status=$?
if [ $status -ne 0 ]; then
    echo "fine-tuning failed; see $RUN/pretrained.log and $RUN/scratch.log" >&2
    exit 1
fi

echo "== test prompts (never seen in fine-tuning), greedy decoding, best checkpoint by dev CER"
"$PY" -m wav2vec2.infer.evaluate "$RUN/pretrained/checkpoint_best.pt" "$RUN/scratch/checkpoint_best.pt" \
    --subset test --json "$RUN/results.json"
echo "== done in $(( ($(date +%s) - start) / 60 )) min; curves: python -m wav2vec2.train.plots $RUN/<run>"
