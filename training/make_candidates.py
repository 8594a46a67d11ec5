"""`python training/make_candidates.py DATA --manifest M (--seg DIR/segmentation.pt | --seg-onnx FILE) [--out DATA/candidates.csv]`

Writes a LUNA16-style `candidates.csv` (`seriesuid,coordX,coordY,coordZ,class`) for a data set that
has none (phantoms): what the nodule classifier learns to reject. Two sources, per series:

1. **detector candidates**: the trained U-Net run over every slice and grouped exactly as noduled
   groups (threshold 0.5, erosion, 6-connected components) — the false positives the classifier
   will really meet (LUNA16's candidates.csv came from detectors the same way);
2. **vessel and wall points**: `--random` voxels a series of soft-tissue density (HU > -300) with
   lung around them (the mean HU of the 15×15 neighbourhood below -500): vessel crossings, airway
   walls and the pleura, where a detector that was not run here would fire.

`--seg-onnx` runs an exported U-Net (an ONNX file with the `ct_slices` → `nodule_probability`
interface, e.g. the shipped models/segmentation.onnx) through onnxruntime instead of a state dict.

A candidate within an annotated nodule's radius is class 1, others class 0. Only series in the
manifest are processed (any split: val candidates are what the classifier is validated on).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

import common
import datasets
import manifest as manifest_mod
from models import SegUNet


def segment(model, hu: np.ndarray, batch: int = 4) -> np.ndarray:
    """The U-Net probability of every voxel (planes padded to multiples of 4 with air)."""
    n, h, w = hu.shape
    hp, wp = -(-h // 4) * 4, -(-w // 4) * 4
    out = np.zeros(hu.shape, dtype=np.float32)
    with torch.no_grad():
        for i0 in range(0, n, batch):
            idx = range(i0, min(i0 + batch, n))
            x = torch.from_numpy(np.stack([common.slice_input(hu, i) for i in idx]))
            x = torch.nn.functional.pad(x, (0, wp - w, 0, hp - h), value=common.HU_MIN)
            out[i0:i0 + len(idx)] = model(x)[:, 0, :h, :w].numpy()
    return out


class OnnxSegmentation:
    """An exported U-Net called like the torch model (`ct_slices` in, `nodule_probability` out)."""

    def __init__(self, path):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = common.threads()
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (p,) = self.session.run(["nodule_probability"], {"ct_slices": x.numpy()})
        return torch.from_numpy(p)


def label(ct, irc, nodules) -> bool:
    xyz = ct.irc_to_xyz(irc)
    return any(np.linalg.norm(xyz - np.asarray(n.xyz)) <= n.diameter_mm / 2 for n in nodules)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--seg", help="segmentation state dict (train_seg.py's segmentation.pt)")
    ap.add_argument("--seg-onnx", help="an exported U-Net (ONNX), run with onnxruntime instead of --seg")
    ap.add_argument("--random", type=int, default=60, help="vessel/wall points per series")
    ap.add_argument("--detect-max", type=int, default=None,
                    help="run the detector on at most N series (val series first), to save CPU")
    ap.add_argument("--out", help="default: DATA/candidates.csv")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    common.seed_everything(a.seed, common.threads())
    rng = np.random.default_rng(a.seed)
    try:
        ds = datasets.open_dataset(a.data)
        man = manifest_mod.Manifest(a.manifest)
        man.require(ds.series_uids)
    except (datasets.DatasetError, manifest_mod.ManifestError) as e:
        print(f"make_candidates: {e}", file=sys.stderr)
        return 2
    model = None
    if a.seg:
        model = SegUNet()
        model.load_state_dict(torch.load(a.seg, map_location="cpu"))
        model.eval()
    elif a.seg_onnx:
        model = OnnxSegmentation(a.seg_onnx)
    out = []
    started = time.time()
    order = man.series("val") + man.series("test") + man.series("train")
    detect = set(order[:a.detect_max] if a.detect_max is not None else order)
    for uid in sorted(man.split_of):
        ct = ds.load(uid)
        ct.hu = np.clip(np.rint(ct.hu), common.HU_MIN, common.HU_MAX).astype(np.int16)
        nodules = ds.nodules_of(uid)
        points = []
        if model is not None and uid in detect:
            points += [c for c, _ in common.group(segment(model, ct.hu), ct.hu)]
        detected = len(points)
        found = sum(any(np.linalg.norm(ct.irc_to_xyz(c) - np.asarray(n.xyz)) <= n.diameter_mm / 2
                        for c in points) for n in nodules)
        points += list(common.vessel_points(ct.hu, a.random, rng))
        for irc in points:
            out.append(datasets.Candidate(uid, tuple(ct.irc_to_xyz(irc)), label(ct, irc, nodules)))
        print(f"{uid} ({man.split_of[uid]}): {detected} detector candidates hitting {found}/{len(nodules)} "
              f"nodules, {len(points) - detected} vessel/wall points ({time.time() - started:.0f} s)", flush=True)
    path = a.out or (ds.root / "candidates.csv")
    datasets.write_candidates(path, out)
    print(f"{path}: {len(out)} candidates, {sum(c.is_nodule for c in out)} on nodules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
