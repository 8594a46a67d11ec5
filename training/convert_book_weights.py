"""`python training/convert_book_weights.py --seg SEG.state --cls CLS.state --out DIR [--malignancy MAL.state]`

Converts the book's published state dicts ("Deep Learning with PyTorch", chapters 13-14; examples
in ../shared/models/book/*.state) to noduled's model files with the same interface and the same
metadata keys as export.py, stating what is known of their data: LUNA16, the book's own split (every
10th series of the sorted list for validation), whose series lists were not published with the
weights — so `noduled.train_series`/`noduled.val_series` are empty and `noduled.source` says why.
Deterministic: the same files in give the same ONNX files out.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import torch

import export
from models import NoduleNet, SegUNet

BOOK_CODE = "deep-learning-with-pytorch/dlwpt-code"
SPLIT_NOTE = ("LUNA16 (LIDC-IDRI subset, 888 CTs); the book holds out every 10th series of the sorted "
              "series list for validation and splits the classifier's samples by nodule, not by CT; the "
              "exact lists were not published with the weights")


def load_state(path) -> dict:
    """The `model_state` dict of a book checkpoint (`module.` prefixes of DataParallel removed)."""
    saved = torch.load(path, map_location="cpu", weights_only=False)
    state = saved["model_state"] if isinstance(saved, dict) and "model_state" in saved else saved
    return {k.removeprefix("module."): v for k, v in state.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seg", help="the book's segmentation .state")
    ap.add_argument("--cls", help="the book's nodule classifier .state")
    ap.add_argument("--malignancy", help="a fine-tuned malignancy .state (optional)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(r, p) for r, p in (("segmentation", a.seg), ("nodule", a.cls), ("malignancy", a.malignancy)) if p]
    if not jobs:
        print("convert_book_weights: give at least one of --seg, --cls, --malignancy", file=sys.stderr)
        return 2
    for role, path in jobs:
        path = pathlib.Path(path)
        try:
            state = load_state(path)
            model = SegUNet() if role == "segmentation" else NoduleNet()
            model.load_state_dict(state)
        except (OSError, RuntimeError, KeyError) as e:
            print(f"convert_book_weights: {path}: {str(e).splitlines()[0]}", file=sys.stderr)
            return 2
        meta = {
            "noduled.role": role,
            "noduled.train_series": [],
            "noduled.val_series": [],
            "noduled.metrics": {},
            "noduled.input": export.ROLES[role][1],
            "noduled.source": {"dataset": "LUNA16", "synthetic": False, "weights": path.name,
                               "weights_sha256": export.sha256(path), "code": BOOK_CODE,
                               "split_note": SPLIT_NOTE},
        }
        file = out / export.ROLES[role][0]
        export.to_onnx(model, role, file, meta)
        print(f"{file}: {file.stat().st_size} bytes, sha256 {export.sha256(file)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
