#!/usr/bin/env bash
# Trains the three default models on noduled phantoms and exports them to models/ — the exact
# recipe behind the shipped files (see models/README.md). CPU-only: about 30 minutes on 2 free cores.
#
#   NODULED=target/debug/noduled PY=/path/to/venv/bin/python bash training/train_phantoms.sh [WORK]
#
# BOOK_CLS (default: the book's classifier state in ../shared/models/book/) is the starting point of
# the nodule classifier; its LUNA16 training series are unknown, which the exported metadata says
# (noduled.pretrained) and noduled's leak guard reports.
#
# WORK (default /tmp/noduled-training) receives the phantoms, the manifest and the run; only the
# ONNX files land in models/, and the manifest is copied to models/manifest.csv.
# Numbers (why): 24 series × 10 nodules = 240 nodules, 180 for training — enough for the classifier
# and the malignancy head to see every nodule kind and attachment many times over; 256×256 planes
# keep realistic pixel spacing (the phantom shrinks the patient to fit), 64 slices cover 80–160 mm;
# one series loads and segments in about a second, so the whole set fits the CPU budget.
set -euo pipefail
cd "$(dirname "$0")/.."
NODULED=${NODULED:?set NODULED to the noduled binary}
PY=${PY:?set PY to the training venv python}
WORK=${1:-/tmp/noduled-training}
SEED=${SEED:-20261204}
BOOK_CLS=${BOOK_CLS:-../shared/models/book/cls_2020-02-06_14.16.55_final-nodule-nonnodule.best.state}
COUNT=${COUNT:-24}
NODULES=${NODULES:-10}  # COUNT=48 NODULES=16: the larger set of the malignancy attempt in models/README.md
SPEC=(--count "$COUNT" --nodules "$NODULES" --slices 64 --rows 256 --columns 256)
export NODULED_TRAINING_THREADS=${NODULED_TRAINING_THREADS:-2}
# OpenMP threads that sleep instead of spinning: on a busy machine spinning wastes the share.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

mkdir -p "$WORK"
if [ ! -e "$WORK/phantoms/annotations.csv" ]; then
    "$NODULED" phantom --out "$WORK/phantoms" --seed "$SEED" "${SPEC[@]}" >/dev/null
fi
"$PY" training/split.py "$WORK/phantoms" --out "$WORK/manifest.csv" --val 0.25 --seed "$SEED"
"$PY" training/train_seg.py "$WORK/phantoms" --manifest "$WORK/manifest.csv" --out "$WORK/run/stage1" --seed "$SEED" --epochs 5 --samples 1000
# 6 more epochs from stage 1 (positives drawn by nodule)
"$PY" training/train_seg.py "$WORK/phantoms" --manifest "$WORK/manifest.csv" --out "$WORK/run" --seed "$((SEED + 1))" --epochs 6 --samples 1000 --resume "$WORK/run/stage1/segmentation.pt"
# Candidates for the classifiers: the final U-Net (as exported) over every series, plus vessel and
# wall points; then the nodule classifier, started from the book's LUNA16 weights (transfer learning:
# the book's classifier already tells phantom nodules from vessels at AUC 0.91, 4 epochs at a low
# rate adapt it).
"$PY" training/export.py "$WORK/run" --out "$WORK/seg-export" --synthetic --dataset "noduled phantom (synthetic)" >/dev/null
"$PY" training/make_candidates.py "$WORK/phantoms" --manifest "$WORK/manifest.csv" --seg-onnx "$WORK/seg-export/segmentation.onnx" --seed "$SEED"
"$PY" training/train_cls.py "$WORK/phantoms" --manifest "$WORK/manifest.csv" --out "$WORK/run" --seed "$SEED" --epochs 4 --samples 800 --batch 16 --lr 1e-4 --init-book "$BOOK_CLS"
# Malignancy is trained and validated but written to $WORK/malignancy, not exported: it stays below
# the diameter baseline (val AUC 0.85 against 0.925), so noduled uses the baseline (models/README.md).
# The best attempt since (COUNT=48 NODULES=16, all blocks, 30 cosine epochs, candidate centres, flip
# average: `--train-blocks 4 --epochs 30 --samples 800 --batch 16 --lr 1e-3 --cosine
# --candidate-centres --flip-average`) came to 0.915 against 0.920 through noduled eval: still below.
# With crops resampled to millimetres (`--crop-mm 1.5 0.75 0.75 --rotate`, same set and recipe) it
# beats the baseline on its val CTs and one fresh set but not on two others (models/README.md).
"$PY" training/finetune_malignancy.py "$WORK/phantoms" --manifest "$WORK/manifest.csv" --nodule "$WORK/run/nodule.pt" --out "$WORK/malignancy" --seed "$SEED" --train-blocks 2 --epochs 15 --samples 800 --batch 16
"$PY" training/export.py "$WORK/run" --out models --synthetic \
    --dataset "noduled phantom (synthetic)" \
    --generator "noduled phantom --seed $SEED ${SPEC[*]}"
cp "$WORK/manifest.csv" models/manifest.csv
