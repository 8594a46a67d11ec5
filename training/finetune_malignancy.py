"""`python training/finetune_malignancy.py DATA --manifest M --nodule DIR/nodule.pt --out DIR`

Malignancy by fine-tuning (the book's chapter 14): the trained nodule classifier gets a new,
freshly initialised head (`head_linear`, 1152 → 2: benign, malignant); the head and, by default,
the last convolution block (`--train-blocks 1`; 0 = head only) are trained on the annotated nodules
of the train series that carry a malignancy label, the rest stays frozen (batch norm in eval mode).

Validation: ROC AUC on the val series' nodules, next to the **diameter baseline** on the very same
nodules (the book's: a larger annotated diameter means more likely malignant; any increasing
function of the diameter such as noduled's logistic has the same AUC). Writes DIR/malignancy.pt and
DIR/malignancy.metrics.json.

Options of the later attempts (models/README.md, "Malignancy attempts"): `--candidate-centres` also
trains on crops centred where the detector's candidates (candidates.csv) hit a train nodule, as
noduled crops them, and validates there too; `--cosine` decays the learning rate; `--flip-average`
validates the model averaged over the crop's 8 flips, and export.py then exports it that way.

`--crop-mm Z Y X` gives the model crops resampled to that spacing (mm per crop voxel along index,
row, column) instead of the CT's own voxels, so it sees a nodule's size in millimetres whatever the
scan's spacing; export.py declares it in `noduled.input` (`crop_mm`) and noduled crops that way.
`--rotate` turns each training crop in-plane by a random angle while resampling.
`--nodule-onnx FILE` starts from an exported nodule classifier (e.g. the shipped models/nodule.onnx)
instead of train_cls.py's nodule.pt; its train series must be train series of the manifest.
`--views K` trains on K augmented views of every training entry pushed once through the frozen
layers (`--train-blocks` 0 to 3), then runs `--epochs` passes over them: many more epochs than
on-the-fly cropping affords on a CPU (the shipped model: 2 blocks, 12 views, 60 epochs).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import torch

import common
from models import FlipAveraged, NoduleNet
from train_cls import cut, open_inputs, optimise, predict, train_balanced

BLOCKS = ("block4", "block3", "block2", "block1")


def labelled(ds, cache, uids):
    """[(uid, irc, malignant, diameter_mm)] of the annotated nodules with a malignancy label."""
    out = []
    for uid in uids:
        ct = cache.get(uid)
        out += [(uid, ct.xyz_to_irc(n.xyz), bool(n.malignant), n.diameter_mm)
                for n in ds.nodules_of(uid) if n.malignant is not None]
    return out


def candidate_views(ds, cache, uids, reach: float = 0.7):
    """[(uid, irc, malignant, diameter_mm)] centred where the detector put them: every candidate of
    `candidates.csv` within `reach` × diameter of a labelled nodule (noduled eval's matching rule),
    labelled as its nearest such nodule. noduled crops around the candidate centre, not the
    annotation, and a U-Net component's HU-weighted centre can sit millimetres off (a nodule on a
    vessel or the pleura), so these are the views the model is asked about in the pipeline."""
    out = []
    for uid in uids:
        ct = cache.get(uid)
        nodules = [n for n in ds.nodules_of(uid) if n.malignant is not None]
        if not nodules:
            continue
        for c in ds.candidates_of(uid):
            dist = [np.linalg.norm(np.subtract(c.xyz, n.xyz)) / n.diameter_mm for n in nodules]
            k = int(np.argmin(dist))
            if dist[k] <= reach:
                n = nodules[k]
                out.append((uid, ct.xyz_to_irc(c.xyz), bool(n.malignant), n.diameter_mm))
    return out


def build(nodule_state: dict, train_blocks: int):
    """The nodule classifier with a new head; returns (model, trainable parameters)."""
    model = NoduleNet()
    model.load_state_dict(nodule_state)
    model.head_linear = torch.nn.Linear(1152, 2)
    for p in model.parameters():
        p.requires_grad = False
    trainable = [model.head_linear] + [getattr(model, b) for b in BLOCKS[:train_blocks]]
    for module in trainable:
        for p in module.parameters():
            p.requires_grad = True
    return model, [p for p in model.parameters() if p.requires_grad]


class _FrozenNorm:
    """Keeps the frozen input batch norm in eval mode while the rest trains."""

    def __init__(self, model):
        self.model = model
        original = model.train

        def train(mode=True):
            original(mode)
            model.tail_batchnorm.eval()
            return model

        model.train = train


def nodule_state_from_onnx(path, man):
    """The NoduleNet state dict held in an exported nodule classifier's initializers (export.py
    keeps PyTorch's parameter names), and its `noduled.pretrained`. Refuses a file whose training
    series are not all train series of `man`: fine-tuning it would carry val series into training."""
    import json

    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    meta = {p.key: p.value for p in m.metadata_props}
    if meta.get("noduled.role") != "nodule":
        raise SystemExit(f"finetune_malignancy: {path} is not a nodule classifier (noduled.role)")
    trained = json.loads(meta.get("noduled.train_series", "[]"))
    outside = sorted(set(trained) - set(man.series("train")))
    if outside:
        raise SystemExit(f"finetune_malignancy: {path} was trained on {len(outside)} series that are "
                         f"not train series of the manifest (first: {outside[0]})")
    state = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in m.graph.initializer}
    state["tail_batchnorm.num_batches_tracked"] = torch.tensor(0)
    pretrained = json.loads(meta["noduled.pretrained"]) if "noduled.pretrained" in meta else None
    return state, pretrained


def fit_on_cached_views(model, train_blocks: int, cache, entries, rng, views: int, epochs: int,
                        batch: int, lr: float, cosine: bool, crop_mm=None, rotate=False, on_epoch=None):
    """Fine-tuning with a frozen stem, the cheap way (`--views K`, `--train-blocks` 0 to 3): the
    frozen part of the network (input batch norm and the first 4 - `train_blocks` blocks) sees
    `views` augmented crops of every training entry once (jitter, flips, 90-degree turns, noise,
    with `rotate` a random in-plane angle); its outputs are kept (float16), and the trained blocks
    and head then run many epochs over them. The same model as training through the frozen layers,
    for a fraction of the CPU: the frozen layers' forward pass is paid once per view, not once per
    sample. Batches are half malignant, half benign; an epoch is one pass's worth of entries."""
    blocks = [model.block1, model.block2, model.block3, model.block4]
    frozen, trained = blocks[:4 - train_blocks], blocks[4 - train_blocks:]
    model.eval()

    def stem(x):
        with torch.no_grad():
            h = model.tail_batchnorm(x.to(memory_format=torch.channels_last_3d))
            for b in frozen:
                h = b(h)
            return h.to(torch.float16)

    started = time.time()
    kept = None
    for v in range(views):
        for k in range(0, len(entries), 32):
            chunk = entries[k:k + 32]
            h = stem(torch.from_numpy(np.stack([cut(cache, e[0], e[1], rng, crop_mm=crop_mm, rotate=rotate)
                                                for e in chunk])))
            if kept is None:
                kept = torch.empty((views, len(entries), *h.shape[1:]), dtype=torch.float16)
            kept[v, k:k + len(chunk)] = h
        print(f"malignancy view {v + 1}/{views} of {len(entries)} crops ({time.time() - started:.0f} s)", flush=True)
    labels = np.array([e[2] for e in entries])
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    if not len(pos) or not len(neg):
        raise SystemExit(f"malignancy: training needs both classes (got {len(pos)} malignant, {len(neg)} benign)")
    params = [p for b in trained for p in b.parameters()] + list(model.head_linear.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()

    def batch_loss():
        idx = np.concatenate([rng.choice(pos, batch // 2), rng.choice(neg, batch - batch // 2)])
        h = kept[rng.integers(views, size=len(idx)), idx].float()
        for b in trained:
            h = b(h)
        return loss_fn(model.head_linear(h.flatten(1)), torch.from_numpy(labels[idx].astype(np.int64)))

    history = optimise(params, epochs, max(len(entries) // batch, 1), lr, batch_loss, "malignancy", cosine,
                       on_epoch)
    model.eval()
    return history


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--manifest", required=True)
    start = ap.add_mutually_exclusive_group(required=True)
    start.add_argument("--nodule", help="train_cls.py's nodule.pt")
    start.add_argument("--nodule-onnx", help="an exported nodule classifier (export.py's nodule.onnx)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-blocks", type=int, default=1, choices=range(0, 5),
                    help="last convolution blocks trained with the head (0: head only)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--samples", type=int, default=800)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--views", type=int, default=None,
                    help="train on K augmented views per entry pushed once through the frozen layers "
                         "(--train-blocks 0 to 3; 0 needs it, default 8 there)")
    ap.add_argument("--cosine", action="store_true", help="cosine learning-rate decay to 0 over the run")
    ap.add_argument("--flip-average", action="store_true",
                    help="validate (and have export.py export) the model averaged over the 8 flips of the crop")
    ap.add_argument("--report-every", type=int, default=0,
                    help="print the val AUC every N epochs (progress only; the result is the last epoch)")
    ap.add_argument("--crop-mm", type=float, nargs=3, metavar=("Z", "Y", "X"),
                    help="crops resampled to this spacing (mm per crop voxel: index, row, column)")
    ap.add_argument("--rotate", action="store_true",
                    help="with --crop-mm: turn each training crop in-plane by a random angle")
    ap.add_argument("--candidate-centres", action="store_true",
                    help="also train on crops centred on the candidates.csv points that match a train "
                         "nodule (within 0.7 x its diameter), as noduled crops them")
    a = ap.parse_args(argv)
    common.seed_everything(a.seed, common.threads())
    rng = np.random.default_rng(a.seed)
    ds, man = open_inputs(a, "finetune_malignancy")
    train, val = man.series("train"), man.series("val")
    cache = common.CtCache(ds)
    entries = labelled(ds, cache, train)
    annotated = len(entries)
    if a.candidate_centres:
        entries += candidate_views(ds, cache, train)
    if a.nodule_onnx:
        nodule_state, pretrained = nodule_state_from_onnx(a.nodule_onnx, man)
    else:
        nodule_state = torch.load(a.nodule, map_location="cpu")
        nodule_info = pathlib.Path(a.nodule).with_suffix(".metrics.json")
        pretrained = common.read_json(nodule_info).get("pretrained") if nodule_info.is_file() else None
    model, params = build(nodule_state, a.train_blocks)
    crop_mm = tuple(a.crop_mm) if a.crop_mm else None
    if a.rotate and not crop_mm:
        ap.error("--rotate needs --crop-mm (turning is done while resampling)")
    _FrozenNorm(model)
    if a.train_blocks == 0 and a.views is None:
        a.views = 8
    if a.views is not None and a.train_blocks == 4:
        ap.error("--views needs a frozen stem: --train-blocks 0 to 3")
    started = time.time()
    val_now = labelled(ds, cache, val)

    def report(epoch):
        if a.report_every and val_now and epoch % a.report_every == 0:
            now = FlipAveraged(model) if a.flip_average else model
            auc = common.roc_auc(predict(now, cache, val_now, crop_mm=crop_mm), [e[2] for e in val_now])
            print(f"malignancy epoch {epoch}: val AUC {auc:.4f}", flush=True)

    if a.views is not None:
        history = fit_on_cached_views(model, a.train_blocks, cache, entries, rng, a.views, a.epochs, a.batch,
                                      a.lr, a.cosine, crop_mm, a.rotate, on_epoch=report)
    else:
        history = train_balanced(model, params, cache, entries, [e[2] for e in entries], a.epochs,
                                 a.samples, a.batch, a.lr, rng, "malignancy", cosine=a.cosine,
                                 on_epoch=report, crop_mm=crop_mm, rotate=a.rotate)
    val_entries = labelled(ds, cache, val)
    scorer = FlipAveraged(model) if a.flip_average else model
    metrics = {"train_loss": history, "epochs": a.epochs, "cached_views": a.views,
               "train_blocks": a.train_blocks,
               "train_nodules": annotated, "train_views": len(entries),
               "candidate_centres": a.candidate_centres, "flip_average": a.flip_average,
               "train_malignant": int(sum(e[2] for e in entries[:annotated]))}
    if val_entries:
        p = predict(scorer, cache, val_entries, crop_mm=crop_mm)
        y = np.array([e[2] for e in val_entries])
        d = np.array([e[3] for e in val_entries])
        metrics.update({"auc": common.roc_auc(p, y), "diameter_baseline_auc": common.roc_auc(d, y),
                        "accuracy": float(np.mean((p > 0.5) == y)),
                        "val_nodules": len(val_entries), "val_malignant": int(y.sum())})
        # the same nodules seen from the detector's candidate centres (as noduled eval crops them)
        seen = candidate_views(ds, cache, val)
        if seen:
            pc = predict(scorer, cache, seen, crop_mm=crop_mm)
            yc = np.array([e[2] for e in seen])
            dc = np.array([e[3] for e in seen])
            metrics.update({"auc_candidate_centres": common.roc_auc(pc, yc),
                            "diameter_baseline_auc_candidate_centres": common.roc_auc(dc, yc),
                            "val_candidate_views": len(seen)})
    metrics["seconds"] = round(time.time() - started, 1)
    metrics["metric_series"] = sorted({e[0] for e in val_entries})
    print(f"malignancy validation: { {k: v for k, v in metrics.items() if k != 'metric_series'} }", flush=True)
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "malignancy.pt")
    common.write_json(out / "malignancy.metrics.json", {
        "role": "malignancy", "metrics": metrics, "train_series": train, "val_series": val,
        "manifest_sha256": man.digest, "seed": a.seed, "code": common.code_revision(),
        "dataset_root": str(ds.root), "dataset_layout": ds.layout, "pretrained": pretrained,
        "recipe": {"from": "nodule classifier", "new_head": "head_linear 1152 -> 2",
                   "trained": ["head_linear", *BLOCKS[:a.train_blocks]], "sampling": "balanced 1:1",
                   "optimizer": f"Adam lr={a.lr}" + (", cosine decay" if a.cosine else ""),
                   "batch": a.batch, "epochs": a.epochs,
                   "samples_per_epoch": len(entries) // a.batch * a.batch if a.views else a.samples,
                   "cached_views": a.views,
                   "candidate_centres": a.candidate_centres, "flip_average": a.flip_average,
                   "crop_mm": list(crop_mm) if crop_mm else None, "rotate": a.rotate,
                   "start": pathlib.Path(a.nodule_onnx or a.nodule).name}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
