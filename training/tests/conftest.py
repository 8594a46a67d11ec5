"""Puts training/ on the import path and makes tiny synthetic data sets in LUNA16's layout."""
import pathlib
import sys

import numpy as np
import pytest

TRAINING = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TRAINING))


def write_mhd(folder: pathlib.Path, uid: str, hu: np.ndarray, origin, spacing) -> None:
    """A MetaImage pair as LUNA16 ships them (int16, x fastest)."""
    (folder / f"{uid}.raw").write_bytes(hu.astype("<i2").tobytes())
    (folder / f"{uid}.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        "TransformMatrix = 1 0 0 0 1 0 0 0 1\n"
        f"Offset = {origin[0]} {origin[1]} {origin[2]}\n"
        f"ElementSpacing = {spacing[0]} {spacing[1]} {spacing[2]}\n"
        f"DimSize = {hu.shape[2]} {hu.shape[1]} {hu.shape[0]}\n"
        f"ElementType = MET_SHORT\nElementDataFile = {uid}.raw\n")


def make_luna(root: pathlib.Path, count: int = 6, seed: int = 0, shape=(24, 64, 64)) -> list:
    """`count` lung-like volumes (air -850 HU with noise, a few bright tubes) with 2 spheres each,
    one large (malignant) and one small (benign); annotations_with_malignancy.csv. Returns uids."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows, uids = [], []
    spacing = (1.0, 1.0, 2.0)
    for k in range(count):
        uid = f"1.2.826.0.1.3680043.9.9999.{seed}.{k}"
        uids.append(uid)
        n, h, w = shape
        hu = rng.normal(-850, 20, size=shape)
        ii, rr, cc = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij")
        # a vessel along z: a realistic false positive
        vr, vc = rng.integers(10, h - 10, size=2)
        hu[((rr - vr) ** 2 + (cc - vc) ** 2) <= 4] = 40
        origin = (-32.0, -40.0, -100.0 - k)
        for radius, malignant in ((6.0, True), (3.0, False)):
            ci, cr, cl = rng.integers(4, n - 4), rng.integers(12, h - 12), rng.integers(12, w - 12)
            inside = (((ii - ci) * spacing[2]) ** 2 + (rr - cr) ** 2 + (cc - cl) ** 2) <= radius ** 2
            hu[inside] = 30
            xyz = (origin[0] + cl * spacing[0], origin[1] + cr * spacing[1], origin[2] + ci * spacing[2])
            rows.append(f"{uid},{xyz[0]},{xyz[1]},{xyz[2]},{2 * radius},{malignant}")
        write_mhd(root, uid, np.rint(hu), origin, spacing)
    (root / "annotations_with_malignancy.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm,mal_bool\n" + "\n".join(rows) + "\n")
    return uids


@pytest.fixture
def luna(tmp_path):
    uids = make_luna(tmp_path / "luna")
    return tmp_path / "luna", uids
