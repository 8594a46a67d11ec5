#!/usr/bin/env bash
# Trains the three default models on noduled phantoms and exports them to models/ — the exact
# recipe behind the shipped files (see models/README.md). CPU-only; about 25 minutes on 2 cores.
#
#   NODULED=target/debug/noduled PY=/path/to/venv/bin/python bash training/train_phantoms.sh [WORK]
#
# WORK (default /tmp/noduled-training) receives the phantoms, the manifest and the run; only the
# ONNX files land in models/, and the manifest is copied to models/manifest.csv.
# Numbers (why): 24 series × 10 nodules = 240 nodules, ~190 for training — enough for the classifier
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

mkdir -p "$WORK"
if [ ! -e "$WORK/phantoms/annotations.csv" ]; then
    "$NODULED" phantom --out "$WORK/phantoms" --seed "$SEED" "${SPEC[@]}" >/dev/null
fi
"$PY" training/split.py "$WORK/phantoms" --out "$WORK/manifest.csv" --val 0.25 --seed "$SEED"
"$PY" training/train_seg.py "$WORK/phantoms" --manifest "$WORK/manifest.csv" --out "$WORK/run" --seed "$SEED"
"$PY" training/make_candidates.py "$WORK/phantoms" --manifest "$WORK/manifest.csv" --seg "$WORK/run/segmentation.pt" --seed "$SEED"
"$PY" training/train_cls.py "$WORK/phantoms" --manifest "$WORK/manifest.csv" --out "$WORK/run" --seed "$SEED"
"$PY" training/finetune_malignancy.py "$WORK/phantoms" --manifest "$WORK/manifest.csv" --nodule "$WORK/run/nodule.pt" --out "$WORK/run" --seed "$SEED"
"$PY" training/export.py "$WORK/run" --out models --synthetic \
    --dataset "noduled phantom (synthetic)" \
    --generator "noduled phantom --seed $SEED ${SPEC[*]}"
cp "$WORK/manifest.csv" models/manifest.csv
