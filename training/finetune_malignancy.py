"""`python training/finetune_malignancy.py DATA --manifest M --nodule DIR/nodule.pt --out DIR`

Malignancy by fine-tuning (the book's chapter 14): the trained nodule classifier gets a new,
freshly initialised head (`head_linear`, 1152 → 2: benign, malignant); the head and, by default,
the last convolution block (`--train-blocks 1`; 0 = head only) are trained on the annotated nodules
of the train series that carry a malignancy label, the rest stays frozen (batch norm in eval mode).

Validation: ROC AUC on the val series' nodules, next to the **diameter baseline** on the very same
nodules (the book's: a larger annotated diameter means more likely malignant; any increasing
function of the diameter such as noduled's logistic has the same AUC). Writes DIR/malignancy.pt and
DIR/malignancy.metrics.json.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import torch

import common
from models import NoduleNet
from train_cls import cut, open_inputs, predict, train_balanced

BLOCKS = ("block4", "block3", "block2", "block1")


def labelled(ds, cache, uids):
    """[(uid, irc, malignant, diameter_mm)] of the annotated nodules with a malignancy label."""
    out = []
    for uid in uids:
        ct = cache.get(uid)
        out += [(uid, ct.xyz_to_irc(n.xyz), bool(n.malignant), n.diameter_mm)
                for n in ds.nodules_of(uid) if n.malignant is not None]
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


def fit_head_on_features(model, cache, entries, rng, views: int, steps: int, lr: float):
    """Head-only fine-tuning (`--train-blocks 0`) the cheap way: the frozen network's 1152 features
    of `views` augmented crops of every training nodule are computed once, then the new head is
    fitted on them (full-batch Adam, class-balanced cross-entropy). Same model, same result as
    training the head through the frozen network, at a fraction of the CPU."""
    model.eval()
    feats, labels = [], []
    with torch.no_grad():
        for _ in range(views):
            for k in range(0, len(entries), 32):
                chunk = entries[k:k + 32]
                x = torch.from_numpy(np.stack([cut(cache, e[0], e[1], rng) for e in chunk]))
                x = x.to(memory_format=torch.channels_last_3d)
                h = model.tail_batchnorm(x)
                h = model.block4(model.block3(model.block2(model.block1(h))))
                feats.append(h.flatten(1))
                labels += [e[2] for e in chunk]
    f, y = torch.cat(feats), torch.tensor(labels, dtype=torch.long)
    pos = float(y.float().mean())
    weight = torch.tensor([1 / max(1 - pos, 1e-6), 1 / max(pos, 1e-6)]) / 2
    opt = torch.optim.Adam(model.head_linear.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    history = []
    for step in range(steps):
        loss = loss_fn(model.head_linear(f), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % max(steps // 5, 1) == 0:
            history.append(loss.item())
            print(f"malignancy head step {step + 1}/{steps}: loss {history[-1]:.4f}", flush=True)
    return history


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--nodule", required=True, help="train_cls.py's nodule.pt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-blocks", type=int, default=1, choices=range(0, 5),
                    help="last convolution blocks trained with the head (0: head only)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--samples", type=int, default=800)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--views", type=int, default=8, help="augmented crops per nodule (--train-blocks 0)")
    ap.add_argument("--head-steps", type=int, default=500, help="head fitting steps (--train-blocks 0)")
    a = ap.parse_args(argv)
    common.seed_everything(a.seed, common.threads())
    rng = np.random.default_rng(a.seed)
    ds, man = open_inputs(a, "finetune_malignancy")
    train, val = man.series("train"), man.series("val")
    cache = common.CtCache(ds)
    entries = labelled(ds, cache, train)
    model, params = build(torch.load(a.nodule, map_location="cpu"), a.train_blocks)
    nodule_info = pathlib.Path(a.nodule).with_suffix(".metrics.json")
    pretrained = common.read_json(nodule_info).get("pretrained") if nodule_info.is_file() else None
    _FrozenNorm(model)
    started = time.time()
    if a.train_blocks == 0:
        history = fit_head_on_features(model, cache, entries, rng, a.views, a.head_steps, a.lr)
    else:
        history = train_balanced(model, params, cache, entries, [e[2] for e in entries], a.epochs,
                                 a.samples, a.batch, a.lr, rng, "malignancy")
    val_entries = labelled(ds, cache, val)
    metrics = {"train_loss": history, "epochs": a.epochs if a.train_blocks else None,
               "head_fit": {"views": a.views, "steps": a.head_steps} if a.train_blocks == 0 else None,
               "train_blocks": a.train_blocks,
               "train_nodules": len(entries), "train_malignant": int(sum(e[2] for e in entries))}
    if val_entries:
        p = predict(model, cache, val_entries)
        y = np.array([e[2] for e in val_entries])
        d = np.array([e[3] for e in val_entries])
        metrics.update({"auc": common.roc_auc(p, y), "diameter_baseline_auc": common.roc_auc(d, y),
                        "accuracy": float(np.mean((p > 0.5) == y)),
                        "val_nodules": len(val_entries), "val_malignant": int(y.sum())})
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
                   "optimizer": f"Adam lr={a.lr}", "batch": a.batch}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
