#!/usr/bin/env bash
# Trains the three default models on noduled phantoms and exports them to models/ — the exact
# recipe behind the shipped files (see models/README.md). CPU-only: about 80 minutes on 2 free cores.
#
#   NODULED=target/debug/noduled PY=/path/to/venv/bin/python bash training/train_phantoms.sh [WORK]
#
# BOOK_CLS (default: the book's classifier state in ../shared/models/book/) is the starting point of
# the nodule classifier; its LUNA16 training series are unknown, which the exported metadata says
# (noduled.pretrained) and noduled's leak guard reports.
#
# WORK (default /tmp/noduled-training) receives the phantoms, the manifest and the run; only the
# ONNX files land in models/, and the manifest is copied to models/manifest.csv.
# Numbers (why): 64 series × 24 nodules = 1536 nodules, 1152 of them (353 malignant) for training.
# The first shipped set, 24 × 10, was enough for the U-Net and the nodule classifier but not for
# malignancy, which must learn the nodule kinds (spicules, lobes, ground glass, calcification) from
# few malignant examples: with 54 it stayed below the diameter baseline (models/README.md). 256×256
# planes keep realistic pixel spacing (the phantom shrinks the patient to fit), 64 slices cover
# 80–160 mm; one series loads and segments in about a second, so the whole set fits the CPU budget.
set -euo pipefail
cd "$(dirname "$0")/.."
NODULED=${NODULED:?set NODULED to the noduled binary}
PY=${PY:?set PY to the training venv python}
WORK=${1:-/tmp/noduled-training}
SEED=${SEED:-20261205}
BOOK_CLS=${BOOK_CLS:-../shared/models/book/cls_2020-02-06_14.16.55_final-nodule-nonnodule.best.state}
COUNT=${COUNT:-64}
NODULES=${NODULES:-24}
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
# Malignancy: the classifier fine-tuned with a new head and its last two blocks, on crops resampled
# to 1.5 × 0.75 × 0.75 mm (sizes in millimetres whatever the spacing) and turned by random in-plane
# angles, 12 such views of every train nodule and detector hit pushed once through the frozen first
# two blocks, then 60 cosine epochs over them; validated as exported, averaged over the crop's 8
# flips. Earlier recipes and why they lost to the diameter baseline: models/README.md.
"$PY" training/finetune_malignancy.py "$WORK/phantoms" --manifest "$WORK/manifest.csv" --nodule "$WORK/run/nodule.pt" --out "$WORK/run" --seed "$SEED" \
    --train-blocks 2 --views 12 --epochs 60 --batch 32 --lr 1e-3 --cosine --candidate-centres --flip-average \
    --crop-mm 1.5 0.75 0.75 --rotate --report-every 20
"$PY" training/export.py "$WORK/run" --out models --synthetic \
    --dataset "noduled phantom (synthetic)" \
    --generator "noduled phantom --seed $SEED ${SPEC[*]}"
cp "$WORK/manifest.csv" models/manifest.csv
