#!/usr/bin/env bash
# usage: bash scripts/dutch_demo.sh      (no arguments; the environment below adjusts it)
#
# Does pretraining help beyond one voice? The finetune_demo's question on Dutch game
# dialogue (Fish Fillets NG, 2 voices, test levels never trained on), against the fair
# baseline, with label-budget curves. About 45 minutes on 2 idle cores with the defaults
# (docs/finetuning.md, "Beyond one voice").
#
# 1. installs the project into ./.venv with scripts/setup_env.sh (skipped when W2V_PYTHON
#    names a ready interpreter);
# 2. prepares the Dutch corpus in $W2V_DATA (default data/fillets-nl; scripts/prepare_fillets.py)
#    and the Asterisk prompts in $W2V_ASTERISK (default data/asterisk, as finetune_demo.sh;
#    5 languages; scripts/prepare_asterisk.py), both from Debian packages;
# 3. pretrains configs/demo.yaml on the unlabelled audio of both (the Dutch training
#    levels and every Asterisk prompt but the English test and dev ones: 2.9 h), validated
#    on the Dutch dev levels;
# 4. fine-tunes configs/ctc_demo.yaml for each label budget and seed, two runs at a time:
#    from the pretrained model (the CNN frozen, as fairseq), and from random weights with the
#    CNN trainable (the fair baseline), each arm at its own learning rate;
# 5. scores the best checkpoint (by dev CER) of every run in $W2V_RUN, this time's and any
#    earlier ones', on the test levels and writes the table and the plot:
#    $W2V_RUN/results.md and $W2V_RUN/label_budget.png (scripts/budget_report.py).
#
# Environment: W2V_PYTHON, W2V_DATA, W2V_ASTERISK as above; W2V_RUN, where the runs go (default
# runs/dutch_demo; rerunning reuses finished runs); W2V_BUDGETS (default "10min"; of 1min,
# 5min, 10min, 30min) and W2V_SEEDS (default "1 2") choose the table's rows;
# W2V_PRETRAIN_UPDATES (default 4000) and W2V_FINETUNE_UPDATES (default 3000) shorten it (the
# tests run a few of each); W2V_LR (default 0.001) and W2V_SCRATCH_LR (default 0.002) the
# two arms' learning rates, each the best of 5e-4, 1e-3 and 2e-3 by dev CER (scratch: of 5e-4
# and 2e-3) in the runs of docs/finetuning.md;
# PYTHON and W2V_TORCH_INDEX for the install (see bash scripts/setup_env.sh --help).
# -h, --help prints this and does nothing else.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
takes_no_arguments "$@"
cd "$(dirname "$0")/.."
DATA=${W2V_DATA:-data/fillets-nl}
ASTERISK=${W2V_ASTERISK:-data/asterisk}
RUN=${W2V_RUN:-runs/dutch_demo}
BUDGETS=${W2V_BUDGETS:-10min}
SEEDS=${W2V_SEEDS:-1 2}
PRETRAIN_UPDATES=${W2V_PRETRAIN_UPDATES:-4000}
FINETUNE_UPDATES=${W2V_FINETUNE_UPDATES:-3000}
LR=${W2V_LR:-0.001}
SCRATCH_LR=${W2V_SCRATCH_LR:-0.002}
start=$(date +%s)

python_env
mkdir -p "$RUN"

echo "== preparing the Dutch corpus in $DATA and the Asterisk prompts in $ASTERISK"
"$PY" scripts/prepare_fillets.py --out "$DATA" | tail -n 3
"$PY" scripts/prepare_asterisk.py --out "$ASTERISK" --finetune-splits "$ASTERISK-lowres" | tail -n 3
mkdir -p "$RUN/pretrain_data"
"$PY" -m wav2vec2.data.manifest_cli --merge "$RUN/pretrain_data/train.tsv" \
    "$DATA/pretrain/train.tsv" "$ASTERISK-lowres/pretrain/train.tsv"
cp "$DATA/pretrain/valid.tsv" "$RUN/pretrain_data/valid.tsv"

echo "== pretraining configs/demo.yaml for $PRETRAIN_UPDATES updates on Dutch + Asterisk (log: $RUN/pretrain.log)"
OMP_NUM_THREADS=2 "$PY" scripts/train.py --config-name demo data.manifest_dir="$RUN/pretrain_data" \
    run_dir="$RUN/pretrain" optim.max_update="$PRETRAIN_UPDATES" train.validate_every=250 \
    checkpoint.save_every=1000 > "$RUN/pretrain.log" 2>&1 || { tail -n 20 "$RUN/pretrain.log" >&2; exit 1; }
tail -n 4 "$RUN/pretrain.log"

# One fine-tuning run: $1 = arm (pretrained|scratch), $2 = label budget, $3 = seed. Its log
# is beside its directory; a finished run (its last checkpoint written) is not run again.
finetune() {
    local arm=$1 budget=$2 seed=$3 dir="$RUN/${1}_${2}_s${3}"
    if [ "$arm" = pretrained ]; then
        set -- task.init="$RUN/pretrain/checkpoint_best.pt" optim.lr="$LR"
    else  # the fair baseline: random weights, the CNN trainable, its own learning rate
        set -- task.init= model.feature_encoder.grad_mult=1.0 optim.lr="$SCRATCH_LR"
    fi
    [ -f "$dir/checkpoint_$(printf %08d "$FINETUNE_UPDATES").pt" ] && return 0
    OMP_NUM_THREADS=1 "$PY" scripts/train.py --config-name ctc_demo data.manifest_dir="$DATA/finetune_$budget" \
        run_dir="$dir" seed="$seed" optim.max_update="$FINETUNE_UPDATES" train.validate_every=250 \
        checkpoint.save_every="$FINETUNE_UPDATES" "$@" > "$dir.log" 2>&1 \
        || { echo "fine-tuning failed: $dir.log" >&2; tail -n 20 "$dir.log" >&2; return 1; }
    echo "   $(basename "$dir"): $(grep -o 'checkpoint_best.pt holds.*' "$dir.log" || echo done)"
}
export -f finetune
export PY RUN DATA LR SCRATCH_LR FINETUNE_UPDATES

echo "== fine-tuning configs/ctc_demo.yaml, $FINETUNE_UPDATES updates, two runs at a time:"
echo "   budgets $BUDGETS, seeds $SEEDS; pretrained (lr $LR) and scratch (lr $SCRATCH_LR)"
jobs=()
for budget in $BUDGETS; do for seed in $SEEDS; do for arm in scratch pretrained; do
    jobs+=("$arm $budget $seed")
done; done; done
printf '%s\n' "${jobs[@]}" | xargs -P 2 -L 1 bash -c 'finetune "$@"' _

echo "== test levels (never seen in fine-tuning or pretraining), greedy decoding, best checkpoint by dev CER"
# every run in $RUN, this time's and earlier ones' (other budgets or seeds): one table
checkpoints=("$RUN"/{pretrained,scratch}_*min_s*/checkpoint_best.pt)
"$PY" -m wav2vec2.infer.evaluate "${checkpoints[@]}" --subset test --json "$RUN/results.json" > "$RUN/evaluate.log"
"$PY" scripts/budget_report.py "$RUN" | tee "$RUN/results.md"
echo "== done in $(( ($(date +%s) - start) / 60 )) min; the plot: $RUN/label_budget.png"
