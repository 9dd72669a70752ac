#!/usr/bin/env bash
# usage: bash scripts/probe_demo.sh      (no arguments; the environment below adjusts it)
#
# What did the demo's pretraining learn, and when? SUPERB-style probes (a frozen upstream read
# through learned layer weights, a light head) on real speech, on a CPU; the tables of
# docs/probing.md. About 13 minutes on 2 cores (12 min 54 s measured: 10 min 15 s, then 2 min 39 s for
# the last stage added since), after scripts/finetune_demo.sh.
#
# 1. installs the project into ./.venv with scripts/setup_env.sh (skipped when W2V_PYTHON
#    names a ready interpreter), and prepares the Asterisk prompts (5 languages, one voice
#    each) in $W2V_DATA (default data/asterisk) with the low-resource splits in $W2V_DATA-lowres,
#    as scripts/finetune_demo.sh does; writes language labels (.lbl) in $W2V_RUN/langid (training:
#    every 12th utterance of 12 s or less; validation: all of them);
# 2. a CTC probe (letters, configs/probe_ctc_demo.yaml) on the 10 English minutes, dev CER, of
#    three frozen upstreams: the demo-pretrained model ($W2V_PRETRAINED, default
#    $W2V_FINETUNE_RUN/pretrain/checkpoint_best.pt), random weights, and the fine-tuned model
#    ($W2V_FINETUNED, default $W2V_FINETUNE_RUN/pretrained/checkpoint_best.pt; scripts/finetune_demo.sh
#    makes both in $W2V_FINETUNE_RUN, default runs/finetune_demo), two seeds each;
# 3. language ID (configs/classify_demo.yaml) on the same upstreams, two seeds each;
# 4. a demo pretraining of $W2V_PRETRAIN_UPDATES updates (default 1200) that keeps a snapshot
#    every 200 (checkpoint.keep_last=0), and its probe curves: the CTC probe of every
#    $W2V_CURVE_EVERY-th snapshot (default 2), two seeds, in $W2V_RUN/pretrain/probe/ next to
#    its curves.png; language ID of every snapshot, two seeds, in $W2V_RUN/pretrain/probe_langid/.
# Every probe is a run in $W2V_RUN (default runs/probe_demo); rerunning reuses finished ones.
# PYTHON and W2V_TORCH_INDEX for the install (see bash scripts/setup_env.sh --help).
# -h, --help prints this and does nothing else.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
takes_no_arguments "$@"
cd "$(dirname "$0")/.."
DATA=${W2V_DATA:-data/asterisk}
SPLITS=${DATA}-lowres
RUN=${W2V_RUN:-runs/probe_demo}
FT_RUN=${W2V_FINETUNE_RUN:-runs/finetune_demo}
PRETRAINED=${W2V_PRETRAINED:-$FT_RUN/pretrain/checkpoint_best.pt}
FINETUNED=${W2V_FINETUNED:-$FT_RUN/pretrained/checkpoint_best.pt}
PRETRAIN_UPDATES=${W2V_PRETRAIN_UPDATES:-1200}
CURVE_EVERY=${W2V_CURVE_EVERY:-2}
start=$(date +%s)
python_env
for model in "$PRETRAINED" "$FINETUNED"; do
    if [ ! -e "$model" ]; then
        echo "probe_demo.sh: no model at $model: run scripts/finetune_demo.sh first (or set W2V_PRETRAINED and W2V_FINETUNED)" >&2
        exit 2
    fi
done
stage() { echo "== $1 ($(( $(date +%s) - start )) s so far)"; }

stage "preparing the corpus in $DATA, the low-resource splits in $SPLITS and language labels in $RUN/langid"
"$PY" scripts/prepare_asterisk.py --out "$DATA" --finetune-splits "$SPLITS"
mkdir -p "$RUN/langid"
# Utterances of at most 12 s (one batch); training: every 12th (~40 per language, 6.5 min), so that
# the frozen upstream's cached states cover the training set after one epoch. The label is the
# language directory (en/..., es/...).
awk -F'\t' 'NR == 1 || $2 <= 192000' "$DATA/train.tsv" | awk 'NR == 1 || (NR - 2) % 12 == 0' > "$RUN/langid/train.tsv"
awk -F'\t' 'NR == 1 || $2 <= 192000' "$DATA/valid.tsv" > "$RUN/langid/valid.tsv"
for split in train valid; do
    awk -F'\t' 'NR > 1 { split($1, path, "/"); print path[1] }' "$RUN/langid/$split.tsv" > "$RUN/langid/$split.lbl"
done

stage "CTC probe on 10 English minutes: demo-pretrained, random, fine-tuned; two seeds"
"$PY" scripts/probe.py "$PRETRAINED" random "$FINETUNED" --preset probe_ctc_demo --seeds 1,2 --out "$RUN/ctc" \
    data.manifest_dir="$SPLITS/finetune_en"

stage "language ID (5 languages, one voice each): demo-pretrained, random, fine-tuned; two seeds"
"$PY" scripts/probe.py "$PRETRAINED" random "$FINETUNED" --preset classify_demo --seeds 1,2 --out "$RUN/langid_probe" \
    data.manifest_dir="$RUN/langid"

stage "pretraining configs/demo.yaml for $PRETRAIN_UPDATES updates, keeping a snapshot every 200"
OMP_NUM_THREADS=2 "$PY" scripts/train.py --config-name demo data.manifest_dir="$SPLITS/pretrain" run_dir="$RUN/pretrain" \
    optim.max_update="$PRETRAIN_UPDATES" checkpoint.keep_last=0 checkpoint.save_every=200
"$PY" -m wav2vec2.train.plots "$RUN/pretrain" --curves-only || true

stage "probe curve: the CTC probe of every $CURVE_EVERY-th snapshot, two seeds"
"$PY" scripts/probe.py "$RUN/pretrain" --every "$CURVE_EVERY" --preset probe_ctc_demo --seeds 1,2 \
    data.manifest_dir="$SPLITS/finetune_en"
stage "probe curve: language ID of every snapshot, two seeds"
"$PY" scripts/probe.py "$RUN/pretrain" --every 1 --preset classify_demo --seeds 1,2 --out "$RUN/pretrain/probe_langid" \
    data.manifest_dir="$RUN/langid"
stage "done: tables in $RUN/ctc/probe.md, $RUN/langid_probe/probe.md, $RUN/pretrain/probe/probe.md, $RUN/pretrain/probe_langid/probe.md"
