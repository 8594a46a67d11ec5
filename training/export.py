"""`python training/export.py RUN --out models/ --dataset TEXT [--synthetic] [--generator TEXT]`

Exports a training run (RUN/segmentation.pt, nodule.pt, malignancy.pt with their .metrics.json) to
noduled's three default model files, drop-in replacements for the book's exports: same input and
output names and shapes, raw HU clamped to [-1000, 1000] in (the model's input batch norm scales):

| file | input | outputs |
|---|---|---|
| segmentation.onnx | `ct_slices` [batch, 7, height, width] | `nodule_probability` [batch, 1, height, width] |
| nodule.onnx | `ct_crop` [batch, 1, 32, 48, 48] | `logits`, `probabilities` [batch, 2] |
| malignancy.onnx | `ct_crop` [batch, 1, 32, 48, 48] | `logits`, `probabilities` [batch, 2] |

ONNX opset 17, with `metadata_props`: `noduled.role`, `noduled.train_series` and
`noduled.val_series` (JSON arrays of SeriesInstanceUIDs, from the manifest), `noduled.metrics`
(JSON, validation metrics; `metric_series` lists the series they were computed on),
`noduled.input` (shape, HU clamp), `noduled.source` (data set, synthetic or not, code revision,
manifest SHA-256, seed). A missing run file is skipped with a message (malignancy is optional).
A run whose recipe says `flip_average` (finetune_malignancy.py --flip-average) is exported with the
8-flip average inside the graph (models.FlipAveraged), as it was validated; one whose recipe has
`crop_mm` (--crop-mm) declares it in `noduled.input`, and noduled resamples its crops to it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import sys

import numpy as np
import onnx
import torch

import common
from models import FlipAveraged, NoduleNet, SegUNet

OPSET = 17

SEG_INPUT = {"shape": ["batch", 7, "height", "width"], "hu_clamp": [-1000, 1000], "context_slices": 3,
             "output": "per-pixel nodule probability, threshold 0.5"}
CROP_INPUT = {"shape": ["batch", 1, 32, 48, 48], "hu_clamp": [-1000, 1000],
              "crop": "index,row,column centred on the rounded candidate centre, shifted inside the volume"}
ROLES = {
    "segmentation": ("segmentation.onnx", SEG_INPUT),
    "nodule": ("nodule.onnx", {**CROP_INPUT, "output": "probabilities[:,1] = p(nodule)"}),
    "malignancy": ("malignancy.onnx", {**CROP_INPUT, "output": "probabilities[:,1] = p(malignant)"}),
}


def sha256(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def to_onnx(model, role: str, path: pathlib.Path, meta: dict) -> None:
    """Exports `model` for `role` with the book's interface and writes `meta` as metadata_props."""
    model.eval()
    if role == "segmentation":
        example = torch.zeros(1, 7, 64, 64)
        names = (["ct_slices"], ["nodule_probability"])
        dynamic = {"ct_slices": {0: "batch", 2: "height", 3: "width"},
                   "nodule_probability": {0: "batch", 2: "height", 3: "width"}}
    else:
        example = torch.zeros(1, 1, 32, 48, 48)
        names = (["ct_crop"], ["logits", "probabilities"])
        dynamic = {"ct_crop": {0: "batch"}, "logits": {0: "batch"}, "probabilities": {0: "batch"}}
    torch.onnx.export(model, example, str(path), input_names=names[0], output_names=names[1],
                      dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    m = onnx.load(str(path))
    del m.metadata_props[:]
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    check_runtime(model, role, path)


def check_runtime(model, role: str, path: pathlib.Path) -> None:
    """The ONNX file answers what the PyTorch model answers (onnxruntime, when installed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return
    rng = np.random.default_rng(0)
    shape = (2, 7, 48, 40) if role == "segmentation" else (2, 1, 32, 48, 48)
    x = rng.uniform(-1000, 1000, size=shape).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {
        "ct_slices" if role == "segmentation" else "ct_crop": x})
    with torch.no_grad():
        want = model(torch.from_numpy(x))
    want = [want] if role == "segmentation" else list(want)
    for g, w in zip(got, want):
        if not np.allclose(g, w.numpy(), atol=1e-4, rtol=1e-3):
            raise SystemExit(f"export: {path} disagrees with the PyTorch model")


def input_of(role: str, run: dict) -> dict:
    """`noduled.input` of `role`; a run trained on resampled crops (finetune_malignancy.py
    --crop-mm) declares their spacing as `crop_mm`, which noduled honours when it crops."""
    crop_mm = run.get("recipe", {}).get("crop_mm")
    if not crop_mm:
        return ROLES[role][1]
    return {**ROLES[role][1], "crop_mm": crop_mm,
            "crop": "index,row,column resampled every crop_mm mm around the unrounded candidate centre: "
                    "crop voxel k at centre + (k - size/2) * crop_mm / voxel_mm, HU clamped then "
                    "interpolated trilinearly, -1000 outside the volume"}


def metadata(role: str, run: dict, source: dict) -> dict:
    meta = {
        "noduled.role": role,
        "noduled.train_series": run["train_series"],
        "noduled.val_series": run["val_series"],
        "noduled.metrics": {k: v for k, v in run["metrics"].items() if k != "train_loss"},
        "noduled.input": input_of(role, run),
        "noduled.source": {**source, "manifest_sha256": run["manifest_sha256"], "seed": run["seed"],
                           "code": run["code"], "recipe": run.get("recipe", {})},
    }
    if run.get("pretrained"):
        # started from weights trained elsewhere: noduled's leak guard cannot vouch for those series
        meta["noduled.pretrained"] = run["pretrained"]
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="folder with train_seg/train_cls/finetune_malignancy outputs")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dataset", required=True, help="what the models were trained on, in words")
    ap.add_argument("--synthetic", action="store_true", help="the data set is synthetic (phantoms)")
    ap.add_argument("--generator", default="", help="the command that made the data set")
    a = ap.parse_args(argv)
    run_dir, out = pathlib.Path(a.run), pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    source = {"dataset": a.dataset, "synthetic": a.synthetic, "framework": f"torch {torch.__version__}"}
    if a.generator:
        source["generator"] = a.generator
    if a.synthetic:
        source["note"] = "trained on synthetic data, not for clinical use"
    runs = {}
    for role in ROLES:
        state, info = run_dir / f"{role}.pt", run_dir / f"{role}.metrics.json"
        if state.is_file() and info.is_file():
            runs[role] = (state, common.read_json(info))
        else:
            print(f"export: no {role} model in {run_dir}, skipped")
    digests = sorted({run["manifest_sha256"] for _, run in runs.values()})
    if len(digests) > 1:
        print(f"export: the models were trained on different manifests: {digests}", file=sys.stderr)
        return 2
    for role, (state, run) in runs.items():
        file = out / ROLES[role][0]
        model = SegUNet() if role == "segmentation" else NoduleNet()
        model.load_state_dict(torch.load(state, map_location="cpu"))
        if run.get("recipe", {}).get("flip_average"):
            model = FlipAveraged(model)  # validated that way (finetune_malignancy.py --flip-average)
        to_onnx(model, role, file, metadata(role, run, source))
        print(f"{file}: {file.stat().st_size} bytes, sha256 {sha256(file)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
