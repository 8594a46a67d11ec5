"""The manifest is the only source of membership: every trainer takes train/val from it, the
exported models record exactly its lists, no model's validation metrics come from a training
series, and segmentation and classification share one split. Runs the whole chain (split,
train_seg, make_candidates, train_cls, finetune_malignancy, export) on a tiny LUNA16-layout set."""
import json

import onnx

import export
import finetune_malignancy
import make_candidates
import manifest
import split
import train_cls
import train_seg

TINY = ["--epochs", "1", "--samples", "16", "--batch", "8"]


def meta(path):
    m = onnx.load(str(path))
    return {p.key: p.value for p in m.metadata_props}


def run_chain(root, man, run, out):
    assert train_seg.main([str(root), "--manifest", str(man), "--out", str(run), *TINY]) == 0
    assert make_candidates.main([str(root), "--manifest", str(man), "--seg", str(run / "segmentation.pt"),
                                 "--random", "10"]) == 0
    assert train_cls.main([str(root), "--manifest", str(man), "--out", str(run), *TINY]) == 0
    assert finetune_malignancy.main([str(root), "--manifest", str(man), "--nodule", str(run / "nodule.pt"),
                                     "--out", str(run), *TINY]) == 0
    assert export.main([str(run), "--out", str(out), "--dataset", "pytest tiny set", "--synthetic"]) == 0


def test_models_record_the_manifest_split_and_validate_only_on_val(luna, tmp_path):
    root, uids = luna
    man = tmp_path / "manifest.csv"
    assert split.main([str(root), "--out", str(man), "--val", "0.34", "--seed", "1"]) == 0
    m = manifest.Manifest(man)
    train, val = set(m.series("train")), set(m.series("val"))
    assert train and val
    run_chain(root, man, tmp_path / "run", tmp_path / "models")

    splits = set()
    for role in ("segmentation", "nodule", "malignancy"):
        md = meta(tmp_path / "models" / f"{role}.onnx")
        assert md["noduled.role"] == role
        assert set(json.loads(md["noduled.train_series"])) == train
        assert set(json.loads(md["noduled.val_series"])) == val
        metrics = json.loads(md["noduled.metrics"])
        measured = set(metrics["metric_series"])
        assert measured, f"{role}: validation metrics name no series"
        assert measured <= val and not measured & train, f"{role}: a train series is in the val metrics"
        source = json.loads(md["noduled.source"])
        assert source["manifest_sha256"] == m.digest and source["synthetic"] is True
        assert json.loads(md["noduled.input"])["hu_clamp"] == [-1000, 1000]
        splits.add((md["noduled.train_series"], md["noduled.val_series"]))
    assert len(splits) == 1, "segmentation and classification must share one split"


def test_changing_the_manifest_changes_membership(luna, tmp_path):
    """Membership follows the manifest and nothing else: moving a series from train to val moves it
    in the trainer's record and its validation metrics."""
    root, uids = luna
    man = tmp_path / "manifest.csv"
    assignment = split.assign(uids, val=0.34, test=0.0, seed=1)
    moved = sorted(u for u, s in assignment.items() if s == "train")[0]
    excluded = sorted(u for u, s in assignment.items() if s == "train")[1]
    assignment[moved] = "val"
    del assignment[excluded]  # a series the manifest does not list is used by nobody
    manifest.write(man, assignment)
    run = tmp_path / "run"
    assert train_seg.main([str(root), "--manifest", str(man), "--out", str(run), *TINY]) == 0
    assert make_candidates.main([str(root), "--manifest", str(man), "--random", "10"]) == 0
    assert train_cls.main([str(root), "--manifest", str(man), "--out", str(run), *TINY]) == 0
    for role in ("segmentation", "nodule"):
        rec = json.loads((run / f"{role}.metrics.json").read_text())
        assert moved in rec["val_series"] and moved not in rec["train_series"]
        assert moved in rec["metrics"]["metric_series"]
        assert excluded not in rec["train_series"] + rec["val_series"] + rec["metrics"]["metric_series"]
    cands = (root / "candidates.csv").read_text()
    assert excluded not in cands, "make_candidates touched a series outside the manifest"


def test_export_refuses_models_of_different_manifests(luna, tmp_path):
    root, uids = luna
    run = tmp_path / "run"
    for k, role in enumerate(("segmentation", "nodule")):
        man = tmp_path / f"m{k}.csv"
        manifest.write(man, split.assign(uids, val=0.34, test=0.0, seed=k))
        trainer = train_seg if role == "segmentation" else train_cls
        if role == "nodule":
            assert make_candidates.main([str(root), "--manifest", str(man), "--random", "5"]) == 0
        assert trainer.main([str(root), "--manifest", str(man), "--out", str(run), *TINY]) == 0
    assert export.main([str(run), "--out", str(tmp_path / "models"), "--dataset", "x"]) == 2
