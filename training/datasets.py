"""Reading CT data sets for training: LUNA16's layout or DICOM series folders (what `noduled phantom`
writes), into one in-memory form, plus the annotation and candidate tables.

Layouts (detected by `open_dataset`):

- **DICOM**: `ROOT/<any folder>/*.dcm` (one series a folder, found recursively) and
  `ROOT/annotations.csv` with `seriesuid,coordX,coordY,coordZ,diameter_mm[,mal_bool]`;
- **LUNA16**: `ROOT/**/<seriesuid>.mhd` (+ `.raw`), `ROOT/annotations.csv` (or the book's
  `annotations_with_malignancy.csv`, which adds `mal_bool`) and `ROOT/candidates.csv`
  (`seriesuid,coordX,coordY,coordZ,class`).

Either layout may carry a `candidates.csv`; for phantoms `make_candidates.py` writes one from the
trained segmentation model (the hard negatives a detector really produces).

Coordinates are patient millimetres (DICOM LPS for DICOM, LUNA16's world coordinates for .mhd) and
volumes are indexed (index, row, column) like noduled's `Volume`: `xyz = origin + D · (c·sx, r·sy,
i·sz)` with D the direction matrix whose columns are the row cosine, column cosine and slice normal.
Which series belongs to which split is never decided here: see `manifest.py`.
"""
from __future__ import annotations

import csv
import dataclasses
import pathlib
from typing import Callable

import numpy as np


class DatasetError(Exception):
    """A data set that cannot be read; the message names the file and the problem."""


@dataclasses.dataclass
class Ct:
    """One CT volume: HU as float32 `[index, row, column]` and its geometry."""

    series_uid: str
    hu: np.ndarray
    origin_xyz: np.ndarray  # position of voxel (0, 0, 0), mm
    spacing_xyz: np.ndarray  # (column step, row step, slice step), mm
    direction: np.ndarray  # 3x3, columns = row cosine, column cosine, slice normal

    def xyz_to_irc(self, xyz) -> np.ndarray:
        """Fractional (index, row, column) of a patient point."""
        cri = np.linalg.solve(self.direction, np.asarray(xyz, float) - self.origin_xyz) / self.spacing_xyz
        return cri[::-1].copy()

    def irc_to_xyz(self, irc) -> np.ndarray:
        cri = np.asarray(irc, float)[::-1] * self.spacing_xyz
        return self.direction @ cri + self.origin_xyz


@dataclasses.dataclass
class Nodule:
    """An annotated nodule: centre (mm), diameter (mm), malignancy (None when unknown)."""

    series_uid: str
    xyz: tuple
    diameter_mm: float
    malignant: bool | None


@dataclasses.dataclass
class Candidate:
    """A detector candidate: centre (mm) and whether it is a nodule (LUNA16's `class`)."""

    series_uid: str
    xyz: tuple
    is_nodule: bool


@dataclasses.dataclass
class Dataset:
    """The series of one data set (uid → loader), its annotations and candidates."""

    root: pathlib.Path
    layout: str  # "dicom" or "luna16"
    loaders: dict[str, Callable[[], Ct]]
    nodules: list[Nodule]
    candidates: list[Candidate]

    @property
    def series_uids(self) -> list[str]:
        return sorted(self.loaders)

    def load(self, uid: str) -> Ct:
        if uid not in self.loaders:
            raise DatasetError(f"{self.root}: no series {uid}")
        return self.loaders[uid]()

    def nodules_of(self, uid: str) -> list[Nodule]:
        return [n for n in self.nodules if n.series_uid == uid]

    def candidates_of(self, uid: str) -> list[Candidate]:
        return [c for c in self.candidates if c.series_uid == uid]


def _truth(value: str) -> bool | None:
    v = value.strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    return None


def read_annotations(path: pathlib.Path) -> list[Nodule]:
    """`seriesuid,coordX,coordY,coordZ,diameter_mm[,mal_bool,...]` (LUNA16, the book, phantoms)."""
    out = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise DatasetError(f"{path}: header must have {sorted(need)}, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                xyz = (float(row["coordX"]), float(row["coordY"]), float(row["coordZ"]))
                d = float(row["diameter_mm"])
            except ValueError as e:
                raise DatasetError(f"{path}:{line}: {e}") from None
            mal = _truth(row["mal_bool"]) if "mal_bool" in row and row["mal_bool"] is not None else None
            out.append(Nodule(row["seriesuid"], xyz, d, mal))
    return out


def read_candidates(path: pathlib.Path) -> list[Candidate]:
    """LUNA16's `candidates.csv`: `seriesuid,coordX,coordY,coordZ,class`."""
    out = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"seriesuid", "coordX", "coordY", "coordZ", "class"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise DatasetError(f"{path}: header must have {sorted(need)}, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                xyz = (float(row["coordX"]), float(row["coordY"]), float(row["coordZ"]))
                cls = int(row["class"])
            except ValueError as e:
                raise DatasetError(f"{path}:{line}: {e}") from None
            out.append(Candidate(row["seriesuid"], xyz, cls == 1))
    return out


def write_candidates(path: pathlib.Path, candidates: list[Candidate]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seriesuid", "coordX", "coordY", "coordZ", "class"])
        for c in candidates:
            w.writerow([c.series_uid, *(f"{v:.4f}" for v in c.xyz), int(c.is_nodule)])


# ---------------------------------------------------------------------------------------- DICOM


def _dicom_series(folder: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """SeriesInstanceUID → files, reading headers only."""
    import pydicom

    series: dict[str, list[pathlib.Path]] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in (".dcm", ""):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "Modality"])
        except Exception:  # not DICOM: annotations, notes
            continue
        if getattr(ds, "Modality", "CT") != "CT" or "SeriesInstanceUID" not in ds:
            continue
        series.setdefault(str(ds.SeriesInstanceUID), []).append(path)
    return series


def load_dicom(uid: str, files: list[pathlib.Path]) -> Ct:
    """One axial CT series → `Ct` (slices sorted along the normal, HU = stored·slope + intercept)."""
    import pydicom

    slices = [pydicom.dcmread(p) for p in files]
    first = slices[0]
    cosines = np.array([float(v) for v in first.ImageOrientationPatient])
    row_cos, col_cos = cosines[:3], cosines[3:]
    normal = np.cross(row_cos, col_cos)
    slices.sort(key=lambda s: float(np.dot(normal, [float(v) for v in s.ImagePositionPatient])))
    positions = np.array([[float(v) for v in s.ImagePositionPatient] for s in slices])
    hu = np.stack([
        s.pixel_array.astype(np.float32) * float(getattr(s, "RescaleSlope", 1))
        + float(getattr(s, "RescaleIntercept", 0))
        for s in slices
    ])
    step = float(np.median(np.diff(positions @ normal))) if len(slices) > 1 else float(
        getattr(first, "SliceThickness", 1.0))
    if step <= 0:
        raise DatasetError(f"series {uid}: slices do not advance along the normal")
    row_step, col_step = (float(v) for v in first.PixelSpacing)  # (between rows, between columns)
    return Ct(uid, hu, positions[0], np.array([col_step, row_step, step]),
              np.stack([row_cos, col_cos, normal], axis=1))


# ---------------------------------------------------------------------------------------- LUNA16


def _mhd_header(path: pathlib.Path) -> dict[str, str]:
    header = {}
    for line in path.read_text().splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            header[k.strip()] = v.strip()
    return header


_MET_TYPES = {"MET_SHORT": np.int16, "MET_USHORT": np.uint16, "MET_FLOAT": np.float32,
              "MET_UCHAR": np.uint8, "MET_CHAR": np.int8, "MET_INT": np.int32}


def load_mhd(path: pathlib.Path) -> Ct:
    """A LUNA16 `.mhd` + `.raw` pair → `Ct` (MetaImage: x fastest, then y, then z)."""
    h = _mhd_header(path)
    try:
        dims = [int(v) for v in h["DimSize"].split()]
        spacing = np.array([float(v) for v in h["ElementSpacing"].split()])
        origin = np.array([float(v) for v in h["Offset"].split()])
        direction = np.array([float(v) for v in h.get("TransformMatrix", "1 0 0 0 1 0 0 0 1").split()])
        dtype = _MET_TYPES[h["ElementType"]]
        raw = path.parent / h["ElementDataFile"]
    except (KeyError, ValueError) as e:
        raise DatasetError(f"{path}: unusable MetaImage header ({e})") from None
    data = np.fromfile(raw, dtype=dtype)
    if data.size != dims[0] * dims[1] * dims[2]:
        raise DatasetError(f"{raw}: {data.size} voxels, header says {dims}")
    hu = data.reshape(dims[2], dims[1], dims[0]).astype(np.float32)
    # MetaImage's TransformMatrix lists the axes' direction vectors one after the other.
    return Ct(path.stem, hu, origin, spacing, direction.reshape(3, 3).T)


# ---------------------------------------------------------------------------------------- open


def open_dataset(root: str | pathlib.Path) -> Dataset:
    """Finds the series, annotations and candidates under `root` (layout detected from the files)."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    annotations = next((root / n for n in ("annotations_with_malignancy.csv", "annotations.csv")
                        if (root / n).is_file()), None)
    if annotations is None:
        raise DatasetError(f"{root}: no annotations.csv")
    nodules = read_annotations(annotations)
    candidates = read_candidates(root / "candidates.csv") if (root / "candidates.csv").is_file() else []
    mhds = sorted(root.rglob("*.mhd"))
    if mhds:
        loaders = {p.stem: (lambda p=p: load_mhd(p)) for p in mhds}
        layout = "luna16"
    else:
        found = _dicom_series(root)
        loaders = {uid: (lambda uid=uid, files=files: load_dicom(uid, files)) for uid, files in found.items()}
        layout = "dicom"
    if not loaders:
        raise DatasetError(f"{root}: no CT series (.mhd files or DICOM series folders)")
    return Dataset(root, layout, loaders, nodules, candidates)
