#!/usr/bin/env bash
# usage: bash scripts/continue_demo.sh      (no arguments; the environment below adjusts it)
#
# Is continuing pretraining from a released model worth it? A language-transfer experiment
# on real speech, on a CPU, roughly 30-40 minutes on 2 idle cores (docs/training.md, "Continuing").
# It pretrains the demo model on four Asterisk languages (es, fr, it, ru), releases it as a
# transformers directory, then spends the same extra compute on the fifth language's
# unlabelled audio (English, 16 minutes) three ways:
#   (a) continue pretraining from the released model  (configs/continue_demo.yaml)
#   (b) pretrain from scratch on English only          (configs/demo.yaml, same updates)
#   (c) nothing: the four-language model as released
# and fine-tunes each with CTC on 10 minutes of English labels (configs/ctc_demo.yaml), two
# fine-tuning seeds each, to test on English prompts never heard in pretraining or fine-tuning. The
# tables go to $W2V_RUN/results.md (scripts/continue_report.py).
#
# Environment: W2V_PYTHON (an interpreter with the project installed; default: set up
# ./.venv with scripts/setup_env.sh), W2V_DATA (default data/asterisk; the splits go to
# $W2V_DATA-lowres), W2V_RUN (default runs/continue_demo; rerunning resumes or reuses the
# runs there), W2V_SOURCE_UPDATES (default 2000), W2V_EXTRA_UPDATES (1000) and
# W2V_FINETUNE_UPDATES (2000) shorten it; PYTHON and W2V_TORCH_INDEX for the install (see
# bash scripts/setup_env.sh --help).
# -h, --help prints this and does nothing else.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
takes_no_arguments "$@"
cd "$(dirname "$0")/.."
DATA=${W2V_DATA:-data/asterisk}
SPLITS=${DATA}-lowres
RUN=${W2V_RUN:-runs/continue_demo}
SOURCE_UPDATES=${W2V_SOURCE_UPDATES:-2000}
EXTRA_UPDATES=${W2V_EXTRA_UPDATES:-1000}
FINETUNE_UPDATES=${W2V_FINETUNE_UPDATES:-2000}
start=$(date +%s)

python_env
mkdir -p "$RUN"

echo "== preparing the corpus, the English splits and the per-language pretraining audio"
"$PY" scripts/prepare_asterisk.py --out "$DATA" --finetune-splits "$SPLITS" \
    --pretrain-languages es,fr,it,ru --pretrain-languages en | tail -n 3

train() {  # $1 = run dir, $2 = threads, the rest = scripts/train.py arguments
    local dir=$1 threads=$2
    shift 2
    OMP_NUM_THREADS=$threads "$PY" scripts/train.py "$@" run_dir="$dir" train.num_threads="$threads" \
        > "$dir.log" 2>&1
}

echo "== the source: configs/demo.yaml on es, fr, it, ru for $SOURCE_UPDATES updates (log: $RUN/source.log)"
train "$RUN/source" 2 --config-name demo data.manifest_dir="$SPLITS/pretrain_es-fr-it-ru" \
    optim.max_update="$SOURCE_UPDATES" checkpoint.save_every=500
echo "== released as a transformers directory: $RUN/source_hf"
[ -d "$RUN/source_hf" ] || "$PY" scripts/convert.py "$RUN/source/checkpoint_last.pt" --to hf "$RUN/source_hf"

echo "== $EXTRA_UPDATES more updates on English, side by side: (a) continued, (b) from scratch"
train "$RUN/continued_s1" 1 --config-name continue_demo task.init="$RUN/source_hf" \
    data.manifest_dir="$SPLITS/pretrain_en" optim.max_update="$EXTRA_UPDATES" seed=1 &
a=$!
train "$RUN/scratch_s1" 1 --config-name demo data.manifest_dir="$SPLITS/pretrain_en" \
    optim.max_update="$EXTRA_UPDATES" train.validate_at_start=true seed=1 &
b=$!
wait $a
wait $b

echo "== fine-tuning configs/ctc_demo.yaml on 10 English minutes, $FINETUNE_UPDATES updates, two seeds"
finetune() {  # $1 = run name, $2 = task.init, $3 = seed
    train "$RUN/ft_$1_s$3" 1 --config-name ctc_demo data.manifest_dir="$SPLITS/finetune_en" \
        task.init="$2" optim.max_update="$FINETUNE_UPDATES" seed="$3" train.validate_every=250
}
for seed in 1 2; do  # two fine-tuning seeds of each pretrained model
    finetune continued "$RUN/continued_s1/checkpoint_last.pt" $seed &
    a=$!
    finetune scratch "$RUN/scratch_s1/checkpoint_last.pt" $seed &
    b=$!
    wait $a
    wait $b
done
finetune source "$RUN/source_hf" 1 &
a=$!
finetune source "$RUN/source_hf" 2 &
b=$!
wait $a
wait $b

echo "== test prompts, greedy decoding, each run's best checkpoint by dev CER"
"$PY" -m wav2vec2.infer.evaluate "$RUN"/ft_*_s*/checkpoint_best.pt --subset test --json "$RUN/results.json" \
    > /dev/null
"$PY" scripts/continue_report.py "$RUN" | tee "$RUN/results.md"
echo "== done in $(( ($(date +%s) - start) / 60 )) min; curves: python -m wav2vec2.train.plots $RUN/<run>"
