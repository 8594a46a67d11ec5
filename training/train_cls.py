"""`python training/train_cls.py DATA --manifest M --out DIR [--epochs N] [--seed S]`

Trains the nodule classifier, the book's 3D CNN (chapter 14), on 32×48×48 crops placed as noduled
places them: positives are the annotated nodules (and candidates that hit one), negatives the
candidates of `candidates.csv` that hit none (`make_candidates.py` writes one for phantoms).
Balanced sampling (every batch half nodules, as the book's `ratio_int=1`), augmentation (centre
jitter, flips, in-plane 90° rotations, noise), cross-entropy on the two logits.

`--init-book STATE` starts from the book's published classifier weights (LUNA16) instead of random
ones — transfer learning, as the book itself does for malignancy. The weights' own training series
are not known (the book did not publish them), so the output records them as `pretrained` with
unknown series, and noduled's leak guard reports such a model as unverifiable.

Train and val series come from the manifest only; the validation AUC is computed on the val
series' candidates and nodules, never on a training series. Writes DIR/nodule.pt and
DIR/nodule.metrics.json.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import torch

import common
import datasets
import manifest as manifest_mod
from models import NoduleNet


def items(ds, cache, uids, use_candidates=True, margin_mm=None):
    """[(uid, centre_irc, is_nodule)] of `uids`: annotations (positives) and candidates. With
    `margin_mm`, negatives closer than radius + margin to a nodule are left out: their crop shows
    the nodule off-centre, a label the few epochs CPU affords cannot learn (training only)."""
    out = []
    for uid in uids:
        ct = cache.get(uid)
        nodules = ds.nodules_of(uid)
        for n in nodules:
            out.append((uid, ct.xyz_to_irc(n.xyz), True))
        if use_candidates:
            for c in ds.candidates_of(uid):
                if margin_mm is not None and not c.is_nodule and any(
                        np.linalg.norm(np.subtract(c.xyz, n.xyz)) < n.diameter_mm / 2 + margin_mm
                        for n in nodules):
                    continue
                out.append((uid, ct.xyz_to_irc(c.xyz), c.is_nodule))
    return out


def cut(cache, uid, irc, rng=None, jitter=(1, 2, 2), crop_mm=None, rotate=False) -> np.ndarray:
    """The noduled crop around `irc` (moved by up to `jitter` voxels and augmented when `rng`):
    voxels of the CT, or with `crop_mm` (index, row, column mm) resampled to that spacing, then
    with `rotate` (and `rng`) turned in-plane by a random angle."""
    ct = cache.get(uid)
    if rng is not None:
        irc = np.asarray(irc, float) + np.array([rng.integers(-j, j + 1) for j in jitter])
    if crop_mm is None:
        x = common.crop(ct.hu, irc)
    else:
        angle = float(rng.uniform(0.0, 2 * np.pi)) if rng is not None and rotate else 0.0
        x = common.crop_resampled(ct.hu, irc, ct.spacing_xyz[::-1], crop_mm, angle)
    if rng is not None:
        x = common.augment(x, rng)
    return x[None]


def predict(model, cache, entries, batch=32, crop_mm=None) -> np.ndarray:
    """Column 1 of the softmax for every (uid, irc, ...) entry, no augmentation."""
    model.eval()
    out = []
    with torch.no_grad():
        for k in range(0, len(entries), batch):
            x = torch.from_numpy(np.stack([cut(cache, e[0], e[1], crop_mm=crop_mm) for e in entries[k:k + batch]]))
            x = x.to(memory_format=torch.channels_last_3d)
            out.append(model(x)[1][:, 1].numpy())
    model.train()
    return np.concatenate(out) if out else np.zeros(0)


def train_balanced(model, params, cache, entries, labels, epochs, samples, batch, lr, rng, tag,
                   cosine=False, on_epoch=None, crop_mm=None, rotate=False):
    """Adam on cross-entropy with batches half positive, half negative; returns the mean losses.
    `crop_mm`, `rotate`: crops resampled to that spacing, turned by random angles (see `cut`).
    `cosine`: the learning rate decays from `lr` to 0 along a cosine over all steps. `on_epoch(epoch)`
    is called after each epoch (progress reports; it must leave the model in training mode)."""
    pos = [e for e, y in zip(entries, labels) if y]
    neg = [e for e, y in zip(entries, labels) if not y]
    if not pos or not neg:
        raise SystemExit(f"{tag}: training needs both classes (got {len(pos)} positive, {len(neg)} negative)")
    # channels-last 3D convolutions are about 4x faster on CPU than the default layout
    model.to(memory_format=torch.channels_last_3d)
    loss_fn = torch.nn.CrossEntropyLoss()
    y = torch.tensor([k % 2 == 0 for k in range(batch)], dtype=torch.long)

    def batch_loss():
        chosen = [pos[int(rng.integers(len(pos)))] if k % 2 == 0 else neg[int(rng.integers(len(neg)))]
                  for k in range(batch)]
        x = torch.from_numpy(np.stack([cut(cache, e[0], e[1], rng, crop_mm=crop_mm, rotate=rotate) for e in chosen]))
        return loss_fn(model(x.to(memory_format=torch.channels_last_3d))[0], y)

    model.train()
    return optimise(params, epochs, max(samples // batch, 1), lr, batch_loss, tag, cosine, on_epoch)


def optimise(params, epochs, steps_per_epoch, lr, batch_loss, tag, cosine=False, on_epoch=None):
    """The training loop every trainer of crops shares: Adam on `params`, `steps_per_epoch` steps of
    `batch_loss()` (a fresh batch's loss) an epoch, the learning rate optionally decayed along a
    cosine over all steps, the mean loss printed and returned per epoch, `on_epoch(epoch)` after each."""
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch) if cosine else None
    history, started = [], time.time()
    for epoch in range(epochs):
        losses = []
        for _ in range(steps_per_epoch):
            loss = batch_loss()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            losses.append(loss.item())
        history.append(float(np.mean(losses)))
        print(f"{tag} epoch {epoch + 1}/{epochs}: loss {history[-1]:.4f} ({time.time() - started:.0f} s)",
              flush=True)
        if on_epoch is not None:
            on_epoch(epoch + 1)
    return history


def book_pretrained(path, split_note: str) -> dict:
    """What a model started from the book's weights inherits: their file, digest and data set, with
    series lists that are unknown (the `noduled.pretrained` metadata)."""
    import hashlib

    data = pathlib.Path(path).read_bytes()
    return {"from": pathlib.Path(path).name, "sha256": hashlib.sha256(data).hexdigest(),
            "weights": "Deep Learning with PyTorch, chapter 14 (dlwpt-code), published state dict",
            "dataset": split_note, "train_series": "unknown"}


def open_inputs(a, tag):
    try:
        ds = datasets.open_dataset(a.data)
        man = manifest_mod.Manifest(a.manifest)
        man.require(ds.series_uids)
    except (datasets.DatasetError, manifest_mod.ManifestError) as e:
        print(f"{tag}: {e}", file=sys.stderr)
        raise SystemExit(2)
    return ds, man


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--samples", type=int, default=1600, help="training crops per epoch")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--margin-mm", type=float, default=None,
                    help="leave out training negatives within a nodule's radius + this margin")
    ap.add_argument("--resume", help="start from this nodule.pt (trained on the same manifest)")
    ap.add_argument("--init-book", help="start from the book's classifier .state (LUNA16 weights)")
    a = ap.parse_args(argv)
    common.seed_everything(a.seed, common.threads())
    rng = np.random.default_rng(a.seed)
    ds, man = open_inputs(a, "train_cls")
    train, val = man.series("train"), man.series("val")
    cache = common.CtCache(ds)
    entries = items(ds, cache, train, margin_mm=a.margin_mm)
    started = time.time()
    model = NoduleNet()
    resumed, pretrained = None, None
    if a.resume and a.init_book:
        print("train_cls: give --resume or --init-book, not both", file=sys.stderr)
        return 2
    if a.init_book:
        from convert_book_weights import SPLIT_NOTE, load_state
        try:
            model.load_state_dict(load_state(a.init_book))
        except (OSError, RuntimeError, KeyError) as e:
            print(f"train_cls: {a.init_book}: {str(e).splitlines()[0]}", file=sys.stderr)
            return 2
        pretrained = book_pretrained(a.init_book, SPLIT_NOTE)
    if a.resume:
        previous = common.read_json(pathlib.Path(a.resume).with_suffix(".metrics.json"))
        if previous["manifest_sha256"] != man.digest:
            print(f"train_cls: {a.resume} was trained on another manifest", file=sys.stderr)
            return 2
        model.load_state_dict(torch.load(a.resume, map_location="cpu"))
        resumed = {k: previous["metrics"].get(k) for k in ("epochs", "train_loss", "auc")}
        resumed["recipe"] = previous.get("recipe")
        pretrained = previous.get("pretrained")
    history = train_balanced(model, model.parameters(), cache, entries, [e[2] for e in entries],
                             a.epochs, a.samples, a.batch, a.lr, rng, "cls")
    val_entries = items(ds, cache, val)
    metrics = {"train_loss": history, "epochs": a.epochs, "samples_per_epoch": a.samples}
    if val_entries:
        p = predict(model, cache, val_entries)
        y = np.array([e[2] for e in val_entries])
        metrics.update({"auc": common.roc_auc(p, y), "accuracy": float(np.mean((p > 0.5) == y)),
                        "val_positives": int(y.sum()), "val_negatives": int((~y).sum()),
                        "recall": float(np.mean(p[y] > 0.5)) if y.any() else None,
                        "false_positive_rate": float(np.mean(p[~y] > 0.5)) if (~y).any() else None})
    metrics["seconds"] = round(time.time() - started, 1)
    metrics["metric_series"] = sorted({e[0] for e in val_entries})
    print(f"cls validation: { {k: v for k, v in metrics.items() if k != 'metric_series'} }", flush=True)
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "nodule.pt")
    common.write_json(out / "nodule.metrics.json", {
        "role": "nodule", "metrics": metrics, "train_series": train, "val_series": val,
        "manifest_sha256": man.digest, "seed": a.seed, "code": common.code_revision(),
        "dataset_root": str(ds.root), "dataset_layout": ds.layout, "pretrained": pretrained,
        "recipe": {"crop": list(common.CROP), "sampling": "balanced 1:1", "optimizer": f"Adam lr={a.lr}",
                   "batch": a.batch, "augmentation": "jitter (1, 2, 2) voxels, flips, 90-degree rotations, 15 HU noise",
                   "train_positives": int(sum(e[2] for e in entries)),
                   "train_negatives": int(sum(not e[2] for e in entries)),
                   "negative_margin_mm": a.margin_mm, "resumed_from": resumed}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
