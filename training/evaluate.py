"""`python training/evaluate.py DATA --noduled BIN --models DIR [--out report.json]`

End-to-end check of shipped models on a data set they never saw (e.g. `noduled phantom --seed
424242 --count 4`): every series goes through `noduled analyze --json` with the models of DIR, and
the answers are scored against DATA/annotations.csv with LUNA16's arithmetic (see common.py):

- **nodule AUC**: ROC AUC of p_nodule over all candidates, a candidate being positive when it lies
  within an annotated nodule's radius;
- **FROC CPM**: mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4, 8 false positives per scan, candidates
  scored by p_nodule (each nodule counted once);
- **malignancy AUC** on the annotated nodules the pipeline found (a finding within the radius):
  the model's p_malignant against the diameter baseline on the same nodules — noduled's baseline
  (its logistic of the segmented diameter) and the annotated diameter; and, on *all* annotated
  nodules, the malignancy model run on the crop at the annotated centre (onnxruntime, noduled's
  crop) against the annotated diameter.

This is the stand-in for `noduled eval` until that lands; it reads only DATA and the models.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

import common
import datasets


def analyze(noduled: str, series_dir: pathlib.Path, models: pathlib.Path, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = pathlib.Path(tmp) / "analysis.json"
        cmd = [noduled, "analyze", str(series_dir), "--seg-model", str(models / "segmentation.onnx"),
               "--nodule-model", str(models / "nodule.onnx"), "--json", str(report),
               "--threads", str(threads)]
        mal = models / "malignancy.onnx"
        cmd += ["--malignancy-model", str(mal) if mal.is_file() else "diameter"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"evaluate: {' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        return json.loads(report.read_text())


def p_diameter(d: float) -> float:
    """noduled's diameter baseline (src/pipeline/malignancy.rs)."""
    return 1.0 / (1.0 + math.exp(-(d - 10.55) / 1.5))


def hit(xyz, nodule) -> bool:
    return float(np.linalg.norm(np.subtract(xyz, nodule.xyz))) <= nodule.diameter_mm / 2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--noduled", required=True, help="the noduled binary")
    ap.add_argument("--models", required=True, help="folder with segmentation/nodule/malignancy.onnx")
    ap.add_argument("--threads", type=int, default=common.threads())
    ap.add_argument("--out", help="write the report as JSON here")
    a = ap.parse_args(argv)
    ds = datasets.open_dataset(a.data)
    if ds.layout != "dicom":
        print("evaluate: noduled analyzes DICOM series folders; convert LUNA16 first", file=sys.stderr)
        return 2
    models = pathlib.Path(a.models)
    seen = models_saw(models)
    overlap = sorted(seen & set(ds.series_uids))
    if overlap:
        print(f"evaluate: {len(overlap)} series were in the models' train/val split, e.g. {overlap[0]}",
              file=sys.stderr)
        return 2
    scores, labels, froc = [], [], []
    mal_found = []  # (p_model, p_baseline, annotated diameter, malignant)
    per_series = {}
    for uid in ds.series_uids:
        nodules = ds.nodules_of(uid)
        series_dir = ds.root / uid if (ds.root / uid).is_dir() else ds.root
        result = analyze(a.noduled, series_dir, models, a.threads)
        cands = result["candidates"]
        for c in cands:
            scores.append(c["p_nodule"])
            labels.append(any(hit(c["center_xyz"], n) for n in nodules))
        froc.append(([(c["center_xyz"], c["p_nodule"]) for c in cands], [(n.xyz, n.diameter_mm) for n in nodules]))
        for n in nodules:
            found = [f for f in result["findings"] if hit(f["center_xyz"], n)]
            if found and n.malignant is not None:
                f = max(found, key=lambda f: f["p_nodule"])
                mal_found.append((f["p_malignant"], p_diameter(f["diameter_mm"]), n.diameter_mm, n.malignant))
        per_series[uid] = {"candidates": len(cands), "findings": len(result["findings"]),
                           "nodules": len(nodules), "seconds": result["seconds"]["total"]}
        print(f"{uid}: {len(cands)} candidates, {len(result['findings'])} findings, {len(nodules)} nodules",
              flush=True)
    report = {"series": len(ds.series_uids), "unseen_by_models": True, "nodule_auc": common.roc_auc(scores, labels),
              "candidates": len(scores), "candidates_on_nodules": int(sum(labels)),
              "froc": common.froc_cpm(froc, len(ds.series_uids)), "per_series": per_series}
    if mal_found:
        p, base, diam, y = (np.array(v) for v in zip(*mal_found))
        report["malignancy_found_nodules"] = {
            "nodules": len(y), "malignant": int(y.sum()), "model_auc": common.roc_auc(p, y),
            "noduled_diameter_baseline_auc": common.roc_auc(base, y),
            "annotated_diameter_auc": common.roc_auc(diam, y)}
    if (models / "malignancy.onnx").is_file():
        report["malignancy_all_nodules"] = malignancy_on_annotations(ds, models / "malignancy.onnx")
    print(json.dumps({k: v for k, v in report.items() if k != "per_series"}, indent=1))
    if a.out:
        common.write_json(a.out, report)
    return 0


def models_saw(models: pathlib.Path) -> set:
    """Every series in the train or val lists of the models' metadata."""
    import onnx

    seen = set()
    for f in ("segmentation.onnx", "nodule.onnx", "malignancy.onnx"):
        if (models / f).is_file():
            meta = {p.key: p.value for p in onnx.load(str(models / f)).metadata_props}
            for key in ("noduled.train_series", "noduled.val_series"):
                value = json.loads(meta.get(key, "[]"))
                seen |= set(value) if isinstance(value, list) else set()
    return seen


def malignancy_on_annotations(ds, model_path) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    cache = common.CtCache(ds)
    p, d, y = [], [], []
    for uid in ds.series_uids:
        ct = cache.get(uid)
        for n in ds.nodules_of(uid):
            if n.malignant is None:
                continue
            x = common.crop(ct.hu, ct.xyz_to_irc(n.xyz))[None, None]
            p.append(float(session.run(["probabilities"], {"ct_crop": x})[0][0, 1]))
            d.append(n.diameter_mm)
            y.append(n.malignant)
    return {"nodules": len(y), "malignant": int(sum(y)), "model_auc": common.roc_auc(p, y),
            "annotated_diameter_auc": common.roc_auc(d, y)}


if __name__ == "__main__":
    sys.exit(main())
