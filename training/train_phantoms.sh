#!/usr/bin/env bash
# Trains the three default models on noduled phantoms and exports them to models/ — the exact
# recipe behind the shipped files (see models/README.md). CPU-only: about 20 minutes on 2 free cores.
#
#   NODULED=target/debug/noduled PY=/path/to/venv/bin/python bash training/train_phantoms.sh [WORK]
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
COUNT=${COUNT:-24}
SPEC=(--count "$COUNT" --nodules 10 --slices 64 --rows 256 --columns 256)
export NODULED_TRAINING_THREADS=${NODULED_TRAINING_THREADS:-2}
# OpenMP threads that sleep instead of spinning: on a busy machine spinning wastes the share.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

mkdir -p "$WORK"
if [ ! -e "$WORK/phantoms/annotations.csv" ]; then
    "$NODULED" phantom --out "$WORK/phantoms" --seed "$SEED" "${SPEC[@]}" >/dev/null
fi
"$PY" training/split.py "$WORK/phantoms" --out "$WORK/manifest.csv" --val 0.25 --seed "$SEED"
"$PY" training/train_seg.py "$WORK/phantoms" --manifest "$WORK/manifest.csv" --out "$WORK/run/stage1" --seed "$SEED" --epochs 5 --samples 1000
"$PY" training/make_candidates.py "$WORK/phantoms" --manifest "$WORK/manifest.csv" --seg "$WORK/run/stage1/segmentation.pt" --seed "$SEED" --detect-max 12
# the U-Net trains on (6 more epochs from stage 1) while the classifiers use stage 1's candidates
"$PY" training/train_seg.py "$WORK/phantoms" --manifest "$WORK/manifest.csv" --out "$WORK/run" --seed "$((SEED + 1))" --epochs 6 --samples 1000 --resume "$WORK/run/stage1/segmentation.pt"
"$PY" training/train_cls.py "$WORK/phantoms" --manifest "$WORK/manifest.csv" --out "$WORK/run/cls1" --seed "$SEED" --epochs 5 --samples 1000
# 4 more epochs, batch 16, without the negatives whose crop shows a nodule off-centre
"$PY" training/train_cls.py "$WORK/phantoms" --manifest "$WORK/manifest.csv" --out "$WORK/run" --seed "$((SEED + 1))" --epochs 4 --samples 800 --batch 16 --margin-mm 10 --resume "$WORK/run/cls1/nodule.pt"
# Malignancy: on this budget neither fine-tuning beat the diameter baseline on the val nodules
# (val AUC 0.51 with head + last block, 3 epochs; 0.49 head only on cached features; baseline
# 0.925), so no malignancy.onnx ships and noduled uses the baseline. With more CPU:
#   "$PY" training/finetune_malignancy.py "$WORK/phantoms" --manifest "$WORK/manifest.csv" \
#       --nodule "$WORK/run/nodule.pt" --out "$WORK/run" --train-blocks 1 --epochs 20
# and export.py picks run/malignancy.pt up.
"$PY" training/export.py "$WORK/run" --out models --synthetic \
    --dataset "noduled phantom (synthetic)" \
    --generator "noduled phantom --seed $SEED ${SPEC[*]}"
cp "$WORK/manifest.csv" models/manifest.csv
