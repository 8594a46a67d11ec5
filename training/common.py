"""What the trainers share: seeding, the CT cache, crops placed exactly as noduled places them,
nodule label masks, grouping as noduled groups, augmentation and the metrics (ROC AUC, FROC CPM).

The crop and grouping arithmetic is noduled's (src/pipeline/classify.rs, group.rs), so a model
sees in training what it will see in the Rust pipeline: `start = round(round(c) - size/2)`,
half-to-even, shifted inside the volume, -1000 HU outside; HU clamped to [-1000, 1000].
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import pathlib

import numpy as np

HU_MIN, HU_MAX = -1000.0, 1000.0
CROP = (32, 48, 48)
CONTEXT = 3  # context slices each side of a segmented slice
HERE = pathlib.Path(__file__).resolve().parent


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seeds Python, numpy and torch, and asks torch for deterministic kernels."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        torch.set_num_threads(threads)


def code_revision() -> str:
    """`git describe`-like revision of this checkout (`+dirty` when training/ has changes)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=HERE, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", str(HERE)], cwd=HERE,
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class CtCache:
    """Loads each CT once, keeps its clamped HU as int16 (exact: phantom and LUNA16 HU are whole
    numbers) and its geometry."""

    def __init__(self, dataset):
        self.dataset = dataset
        self._cts = {}

    def get(self, uid: str):
        if uid not in self._cts:
            ct = self.dataset.load(uid)
            ct.hu = np.clip(np.rint(ct.hu), HU_MIN, HU_MAX).astype(np.int16)
            self._cts[uid] = ct
        return self._cts[uid]


def crop_start(centre: float, width: int, extent: int) -> int:
    """noduled's `crop_start`: Python's round() is half-to-even like Rust's round_ties_even."""
    start = int(round(round(centre) - width / 2))
    if extent >= width:
        return min(max(start, 0), extent - width)
    return start


def crop(hu: np.ndarray, centre_irc, size=CROP) -> np.ndarray:
    """The clamped-HU crop of `size` around `centre_irc`, float32, -1000 outside the volume."""
    out = np.full(size, HU_MIN, dtype=np.float32)
    src, dst = [], []
    for axis in range(3):
        extent = hu.shape[axis]
        start = crop_start(float(centre_irc[axis]), size[axis], extent)
        lo, hi = max(start, 0), min(start + size[axis], extent)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = np.clip(hu[tuple(src)], HU_MIN, HU_MAX)
    return out


def crop_resampled(hu: np.ndarray, centre_irc, voxel_mm_irc, crop_mm_irc, angle: float = 0.0,
                   size=CROP) -> np.ndarray:
    """The crop of `size` sampled every `crop_mm_irc` mm (index, row, column) around `centre_irc`:
    noduled's `crop_resampled` (src/pipeline/classify.rs). Crop voxel k of an axis sits at
    `c + (k - size/2) * crop_mm / voxel_mm` (voxel k = size/2 on the unrounded centre), HU are
    clamped to [-1000, 1000] and then interpolated trilinearly, voxels outside the volume count as
    -1000. A model fed this sees a nodule's size in millimetres whatever the scan's spacing.
    `angle` (radians, training augmentation only) turns the (row, column) grid about the index
    axis through the centre: a nodule keeps its size at any angle, where the 90° turns of
    `augment` give only four views."""
    k = [(np.arange(n, dtype=np.float64) - n / 2) * float(mm) for n, mm in zip(size, crop_mm_irc)]
    dz, dy, dx = np.meshgrid(*k, indexing="ij")
    if angle:
        cos, sin = np.cos(angle), np.sin(angle)
        dy, dx = cos * dy - sin * dx, sin * dy + cos * dx
    points = [float(c) + o / float(v) for c, o, v in zip(centre_irc, (dz, dy, dx), voxel_mm_irc)]
    lower = [np.floor(p).astype(np.int64) for p in points]
    frac = [p - lo for p, lo in zip(points, lower)]
    out = np.zeros(size, dtype=np.float64)
    for corner in range(8):
        d = [(corner >> (2 - axis)) & 1 for axis in range(3)]
        idx = [lo + di for lo, di in zip(lower, d)]
        inside = np.ones(size, dtype=bool)
        for i, n in zip(idx, hu.shape):
            inside &= (i >= 0) & (i < n)
        values = np.clip(hu[tuple(np.clip(i, 0, n - 1) for i, n in zip(idx, hu.shape))].astype(np.float64),
                         HU_MIN, HU_MAX)
        values[~inside] = HU_MIN
        weight = np.ones(size)
        for f, di in zip(frac, d):
            weight *= f if di else 1.0 - f
        out += weight * values
    return out.astype(np.float32)


def slice_input(hu: np.ndarray, index: int, rows=None, cols=None) -> np.ndarray:
    """7×H×W: slice `index` and 3 context slices each side (edge slices repeated), clamped HU;
    optionally only `rows`/`cols` (slices) of the plane."""
    n = hu.shape[0]
    idx = [min(max(index + k - CONTEXT, 0), n - 1) for k in range(2 * CONTEXT + 1)]
    planes = hu[idx]
    if rows is not None:
        planes = planes[:, rows, cols]
    return np.clip(planes.astype(np.float32), HU_MIN, HU_MAX)


def nodule_mask(ct, nodules) -> np.ndarray:
    """Label mask of the annotated nodules: an ellipsoid of the annotated diameter in-plane and at
    least ±1 slice through the centre (so a small nodule on thick slices survives the pipeline's
    6-neighbour erosion), on soft tissue or ground glass (HU > -850)."""
    mask = np.zeros(ct.hu.shape, dtype=bool)
    sx, sy, sz = ct.spacing_xyz
    for n in nodules:
        c = ct.xyz_to_irc(n.xyz)
        r = n.diameter_mm / 2.0
        rz = max(r, 1.01 * sz)
        lo = [int(np.floor(c[0] - rz / sz)), int(np.floor(c[1] - r / sy)), int(np.floor(c[2] - r / sx))]
        hi = [int(np.ceil(c[0] + rz / sz)) + 1, int(np.ceil(c[1] + r / sy)) + 1, int(np.ceil(c[2] + r / sx)) + 1]
        lo = [max(v, 0) for v in lo]
        hi = [min(v, s) for v, s in zip(hi, ct.hu.shape)]
        if any(h <= l for l, h in zip(lo, hi)):
            continue
        ii, rr, cc = np.meshgrid(*(np.arange(l, h) for l, h in zip(lo, hi)), indexing="ij")
        inside = (((ii - c[0]) * sz / rz) ** 2 + ((rr - c[1]) * sy / r) ** 2 + ((cc - c[2]) * sx / r) ** 2) <= 1.0
        box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        # the centre slice keeps the whole disc, other slices need the nodule's density
        dense = ct.hu[box] > -850
        centre_plane = (ii == int(round(c[0])))
        mask[box] |= inside & (dense | centre_plane)
    return mask


def group(probability: np.ndarray, hu: np.ndarray):
    """noduled's grouping (and the book's): threshold 0.5, one 6-neighbour erosion, 6-connected
    components, centres weighted by clamp(HU)+1001. Returns [(centre_irc, voxels)]."""
    from scipy import ndimage

    mask = ndimage.binary_erosion(probability > 0.5, iterations=1)
    labels, count = ndimage.label(mask)
    if count == 0:
        return []
    weights = np.clip(hu.astype(np.float32), HU_MIN, HU_MAX) + 1001.0
    centres = ndimage.center_of_mass(weights, labels, range(1, count + 1))
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    return [(np.array(c), int(s)) for c, s in zip(centres, sizes)]


def vessel_points(hu: np.ndarray, count: int, rng) -> np.ndarray:
    """Up to `count` random (index, row, column) voxels of soft-tissue density (HU > -300) with lung
    around them (mean HU of the 15×15 in-plane neighbourhood below -500): vessels, airway walls,
    the pleura — where a nodule detector fires falsely."""
    from scipy import ndimage

    surround = ndimage.uniform_filter(hu.astype(np.float32), size=(1, 15, 15))
    where = np.argwhere((hu > -300) & (surround < -500))
    if len(where) == 0:
        return np.zeros((0, 3))
    return where[rng.choice(len(where), size=min(count, len(where)), replace=False)].astype(float)


# ------------------------------------------------------------------------------- augmentation


def augment(x: np.ndarray, rng: np.random.Generator, label: np.ndarray | None = None,
            noise_hu: float = 15.0):
    """Random flips of every axis, a random 90° rotation of the last two (square) axes and Gaussian
    noise in HU on `x` — the book's augmentation without its resampling, which CPU time forbids.
    `label` (same last two axes) gets the same flips of those axes and the same rotation. For a
    7×H×W segmentation input, flipping axis 0 reverses the context slices: a z mirror, still a CT."""
    for axis in range(x.ndim):
        if rng.random() < 0.5:
            x = np.flip(x, axis=axis)
            if label is not None and axis >= x.ndim - 2:
                label = np.flip(label, axis=label.ndim - (x.ndim - axis))
    if x.shape[-1] == x.shape[-2]:
        k = int(rng.integers(4))
        x = np.rot90(x, k=k, axes=(x.ndim - 2, x.ndim - 1))
        if label is not None:
            label = np.rot90(label, k=k, axes=(label.ndim - 2, label.ndim - 1))
    x = x + rng.normal(0.0, noise_hu, size=x.shape).astype(np.float32)
    x = np.ascontiguousarray(np.clip(x, HU_MIN, HU_MAX), dtype=np.float32)
    if label is None:
        return x
    return x, np.ascontiguousarray(label)


# ------------------------------------------------------------------------------------ metrics


def roc_auc(scores, labels) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count half); None without both classes."""
    s = np.asarray(scores, float)
    y = np.asarray(labels, bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return None
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    allv = np.concatenate([pos, neg])[order]
    ranks = np.empty(len(allv))
    i = 0
    while i < len(allv):  # average ranks of ties
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2.0 + 1.0
        i = j + 1
    rank_of = np.empty(len(allv))
    rank_of[order] = ranks
    r_pos = rank_of[:len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2.0) / (len(pos) * len(neg)))


FROC_FPS = (0.125, 0.25, 0.5, 1, 2, 4, 8)


def froc_cpm(per_series, n_series: int) -> dict:
    """LUNA16's FROC score: `per_series` is a list of (candidates [(xyz, score)], nodules [(xyz,
    diameter)]). A candidate within a nodule's radius hits it (each nodule counts once, with its
    best hit's score); other candidates are false positives. Sensitivity at 1/8…8 false positives
    per scan, averaged = CPM."""
    hits, fps, total = [], [], 0
    for candidates, nodules in per_series:
        total += len(nodules)
        best = [None] * len(nodules)
        for xyz, score in candidates:
            d = [np.linalg.norm(np.subtract(xyz, n_xyz)) for n_xyz, _ in nodules]
            inside = [k for k, (dist, (_, diam)) in enumerate(zip(d, nodules)) if dist <= diam / 2.0]
            if inside:
                for k in inside:
                    best[k] = score if best[k] is None else max(best[k], score)
            else:
                fps.append(score)
        hits.extend(s for s in best if s is not None)
    if total == 0 or n_series == 0:
        return {"cpm": None, "sensitivity": {}, "nodules": total}
    fps = np.sort(np.asarray(fps))[::-1]
    sens = {}
    for rate in FROC_FPS:
        allowed = int(np.floor(rate * n_series))
        # threshold: the score of the (allowed+1)-th false positive; hits must score above it
        thr = fps[allowed] if allowed < len(fps) else -np.inf
        sens[str(rate)] = float(sum(1 for h in hits if h > thr) / total)
    return {"cpm": float(np.mean(list(sens.values()))), "sensitivity": sens, "nodules": total,
            "detected": len(hits), "false_positives": int(len(fps))}


def write_json(path, obj) -> None:
    pathlib.Path(path).write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_json(path):
    return json.loads(pathlib.Path(path).read_text())


def threads() -> int:
    return int(os.environ.get("NODULED_TRAINING_THREADS", "2"))
