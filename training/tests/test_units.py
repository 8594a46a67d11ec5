"""Readers, the manifest, noduled's crop arithmetic and the metrics."""
import numpy as np
import pytest

import common
import datasets
import manifest
import split


def test_mhd_reader_puts_annotations_on_their_nodules(luna):
    root, uids = luna
    ds = datasets.open_dataset(root)
    assert ds.layout == "luna16" and ds.series_uids == sorted(uids)
    for uid in uids:
        ct = ds.load(uid)
        assert ct.hu.shape == (24, 64, 64)
        for n in ds.nodules_of(uid):
            i, r, c = np.rint(ct.xyz_to_irc(n.xyz)).astype(int)
            assert ct.hu[i, r, c] > -200, "annotation centre is not on the nodule"
            assert np.allclose(ct.irc_to_xyz(ct.xyz_to_irc(n.xyz)), n.xyz)
        assert {n.malignant for n in ds.nodules_of(uid)} == {True, False}


def test_split_is_seeded_complete_and_by_series(luna, tmp_path):
    root, uids = luna
    a = split.assign(uids, val=0.34, test=0.0, seed=3)
    b = split.assign(list(reversed(uids)), val=0.34, test=0.0, seed=3)
    assert a == b, "the split must not depend on listing order"
    assert set(a) == set(uids)
    assert sorted(a.values()).count("val") == 2
    assert split.assign(uids, 0.34, 0.0, seed=4) != a or len(uids) < 3
    digest = manifest.write(tmp_path / "m.csv", a)
    m = manifest.Manifest(tmp_path / "m.csv")
    assert m.digest == digest and len(digest) == 64
    assert set(m.series("train")) | set(m.series("val")) == set(uids)
    assert not set(m.series("train")) & set(m.series("val"))
    with pytest.raises(manifest.ManifestError):
        split.assign(uids[:2], val=0.5, test=0.5, seed=0)


def test_manifest_refuses_bad_rows(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("series_uid,split\n1.2.3,train\n1.2.3,val\n")
    with pytest.raises(manifest.ManifestError, match="listed twice"):
        manifest.Manifest(p)
    p.write_text("series_uid,split\n1.2.3,holdout\n")
    with pytest.raises(manifest.ManifestError, match=":2:"):
        manifest.Manifest(p)
    p.write_text("uid,set\n")
    with pytest.raises(manifest.ManifestError, match="header"):
        manifest.Manifest(p)
    p.write_text("series_uid,split\n1.2.3,train\n")
    with pytest.raises(manifest.ManifestError, match="not in the data set"):
        manifest.Manifest(p).require(["4.5.6"])


def test_crop_is_noduleds():
    # half-to-even on both roundings, shifted inside the volume (src/pipeline/classify.rs)
    assert common.crop_start(2.5, 4, 10) == 0  # round(2.5) = 2, 2 - 2 = 0
    assert common.crop_start(3.5, 4, 10) == 2  # round(3.5) = 4
    assert common.crop_start(9.0, 4, 10) == 6  # shifted inside
    assert common.crop_start(1.0, 6, 4) == -2  # thinner than the crop: unshifted
    hu = np.arange(40 * 60 * 60, dtype=np.float32).reshape(40, 60, 60) - 2000
    c = common.crop(hu, (20.0, 30.0, 30.0))
    assert c.shape == common.CROP
    assert c.min() >= -1000 and c.max() <= 1000
    thin = np.zeros((10, 60, 60), dtype=np.int16)
    c = common.crop(thin, (5.0, 30.0, 30.0))
    assert (c[:11] == -1000).all() and (c[11:21] == 0).all() and (c[21:] == -1000).all()


def test_resampled_crop_keeps_millimetres_at_any_angle():
    # a 10 mm ball in a CT of 2.5 mm slices and 0.7 mm pixels
    idx, row, col = np.meshgrid(np.arange(40) * 2.5, np.arange(100) * 0.7, np.arange(100) * 0.7,
                                indexing="ij")
    ball = ((idx - 50) ** 2 + (row - 35) ** 2 + (col - 35) ** 2 < 25).astype(np.int16) * 1040 - 1000
    centre, voxel, grid = (20.0, 50.0, 50.0), (2.5, 0.7, 0.7), (1.5, 0.75, 0.75)
    flat = common.crop_resampled(ball, centre, voxel, grid)
    # same voxel spacing as the CT's: the voxel crop, value for value
    assert np.array_equal(common.crop_resampled(ball, centre, voxel, voxel),
                          common.crop(ball, centre))
    # a full turn is no turn
    assert np.allclose(common.crop_resampled(ball, centre, voxel, grid, 2 * np.pi), flat, atol=1e-3)
    # the ball keeps its volume in mm³ (±10 %: it is drawn on 2.5 mm slices), turned or not (±5 %)
    inside = (flat > -500).sum()
    assert abs(inside * np.prod(grid) / (4 / 3 * np.pi * 5 ** 3) - 1) < 0.10
    for angle in (0.4, 2.0):
        x = common.crop_resampled(ball, centre, voxel, grid, angle)
        assert abs((x > -500).sum() / inside - 1) < 0.05, angle
        assert x.min() >= -1000 and x.max() <= 1000
    # outside the volume: air
    assert (common.crop_resampled(ball, (200.0, 50.0, 50.0), voxel, grid) == -1000).all()


def test_slice_input_repeats_edges():
    hu = np.arange(4, dtype=np.float32)[:, None, None] * 1000 - 1500 + np.zeros((4, 2, 2), np.float32)
    x = common.slice_input(hu, 0)
    assert x.shape == (7, 2, 2)
    assert list(x[:, 0, 0]) == [-1000, -1000, -1000, -1000, -500, 500, 1000]


def test_auc_and_cpm():
    assert common.roc_auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert common.roc_auc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    assert common.roc_auc([0.5, 0.5], [1, 0]) == 0.5
    assert common.roc_auc([0.5], [1]) is None
    nodules = [((0.0, 0.0, 0.0), 10.0), ((50.0, 0.0, 0.0), 10.0)]
    perfect = [([((1.0, 0.0, 0.0), 0.9), ((50.0, 1.0, 0.0), 0.8), ((100.0, 0.0, 0.0), 0.1)], nodules)]
    assert common.froc_cpm(perfect, 1)["cpm"] == 1.0
    # one nodule missed entirely, the other found: 0.5 at every rate
    half = [([((1.0, 0.0, 0.0), 0.9)], nodules)]
    assert common.froc_cpm(half, 1)["cpm"] == 0.5
    # a false positive above the hit: at 1/8 FP per scan (0 allowed) nothing counts
    fp_first = [([((1.0, 0.0, 0.0), 0.5), ((100.0, 0.0, 0.0), 0.9)], nodules[:1])]
    r = common.froc_cpm(fp_first, 1)
    assert r["sensitivity"]["0.125"] == 0.0 and r["sensitivity"]["1"] == 1.0


def test_group_matches_the_book():
    p = np.zeros((7, 9, 9), np.float32)
    p[1:6, 1:6, 1:6] = 0.9  # a 5-cube erodes to a 3-cube
    p[1:4, 7:8, 7:8] = 0.9  # a 1-voxel-thin line vanishes
    hu = np.zeros(p.shape, np.int16)
    groups = common.group(p, hu)
    assert len(groups) == 1
    centre, voxels = groups[0]
    assert voxels == 27 and np.allclose(centre, (3, 3, 3))


def test_flip_average_is_the_mean_of_the_eight_flips_and_exports(tmp_path):
    """models.FlipAveraged (finetune_malignancy.py --flip-average): the mean softmax of the 8 flips,
    logits whose softmax is that mean, and export.py writes it when the run's recipe says so."""
    import torch

    import export
    from models import FlipAveraged, NoduleNet

    torch.manual_seed(0)
    net = NoduleNet().eval()
    x = torch.randn(2, 1, 32, 48, 48) * 300
    with torch.no_grad():
        logits, p = FlipAveraged(net)(x)
        want = torch.stack([net(torch.flip(x, f) if f else x)[1] for f in FlipAveraged.FLIPS]).mean(0)
        assert torch.allclose(p, want, atol=1e-6)
        assert torch.allclose(torch.softmax(logits, 1), p, atol=1e-6)
        assert torch.allclose(FlipAveraged(net)(torch.flip(x, (3,)))[1], p, atol=1e-5), "flip invariant"
    run = tmp_path / "run"
    run.mkdir()
    torch.save(net.state_dict(), run / "malignancy.pt")
    common.write_json(run / "malignancy.metrics.json", {
        "role": "malignancy", "metrics": {"auc": 0.5}, "train_series": ["a"], "val_series": ["b"],
        "manifest_sha256": "0" * 64, "seed": 0, "code": "test", "recipe": {"flip_average": True}})
    # export.check_runtime compares the ONNX file with the wrapped model (onnxruntime, when installed)
    assert export.main([str(run), "--out", str(tmp_path / "models"), "--dataset", "pytest"]) == 0
    assert (tmp_path / "models" / "malignancy.onnx").is_file()


def test_cached_view_finetuning_trains_only_the_unfrozen_blocks():
    """finetune_malignancy.py --views: the frozen stem (input batch norm, blocks 1-2 with
    --train-blocks 2) keeps its weights, blocks 3-4 and the new head learn, every epoch reports a
    finite loss."""
    import torch

    import finetune_malignancy
    from models import NoduleNet

    class Ct:
        hu = np.full((40, 64, 64), -800, dtype=np.int16)
        hu[16:24, 26:38, 26:38] = 40
        spacing_xyz = (0.7, 0.7, 2.0)

    class Cache:
        def get(self, uid):
            return Ct

    torch.manual_seed(0)
    model, _ = finetune_malignancy.build(NoduleNet().state_dict(), 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    entries = [("a", (20.0, 32.0, 32.0), True, 8.0), ("a", (10.0, 20.0, 20.0), False, 4.0)] * 2
    history = finetune_malignancy.fit_on_cached_views(
        model, 2, Cache(), entries, np.random.default_rng(0), views=2, epochs=2, batch=4, lr=1e-2,
        cosine=True, crop_mm=(1.5, 0.75, 0.75), rotate=True)
    assert len(history) == 2 and all(np.isfinite(history))
    after = model.state_dict()
    for name, value in before.items():
        frozen = name.startswith(("tail_batchnorm", "block1.", "block2."))
        assert torch.equal(after[name], value) == frozen, name
