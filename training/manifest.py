"""The split manifest: the ONE file that says which series is in train, val or test.

Format: CSV `series_uid,split` with split ∈ {train, val, test}, one row a series, sorted by uid.
Every trainer takes its series from here and from nowhere else, so segmentation and classification
share one CT-level split and a validation nodule can never have been trained on (the book split the
classifier's data by nodule, leaking validation CTs into training). Its SHA-256 (`digest`) goes into
every exported model's metadata.
"""
from __future__ import annotations

import csv
import hashlib
import pathlib

SPLITS = ("train", "val", "test")


class ManifestError(Exception):
    """A manifest that cannot be used; the message names the file and the problem."""


class Manifest:
    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise ManifestError(f"cannot read manifest {self.path}: {e.strerror}") from None
        self.digest = hashlib.sha256(data).hexdigest()
        self.split_of: dict[str, str] = {}
        reader = csv.reader(data.decode("utf-8").splitlines())
        header = next(reader, None)
        if header != ["series_uid", "split"]:
            raise ManifestError(f"{self.path}: header must be series_uid,split, got {header}")
        for line, row in enumerate(reader, start=2):
            if len(row) != 2 or row[1] not in SPLITS or not row[0]:
                raise ManifestError(f"{self.path}:{line}: expected <uid>,<train|val|test>, got {row}")
            if row[0] in self.split_of:
                raise ManifestError(f"{self.path}:{line}: series {row[0]} listed twice")
            self.split_of[row[0]] = row[1]

    def series(self, split: str) -> list[str]:
        """The series of one split, sorted."""
        if split not in SPLITS:
            raise ManifestError(f"unknown split {split!r}")
        return sorted(uid for uid, s in self.split_of.items() if s == split)

    def require(self, available) -> None:
        """Fails unless every series of the manifest is in `available` (the data set's uids)."""
        missing = sorted(set(self.split_of) - set(available))
        if missing:
            raise ManifestError(f"{self.path}: {len(missing)} series not in the data set, e.g. {missing[0]}")


def write(path: str | pathlib.Path, assignment: dict[str, str]) -> str:
    """Writes `uid → split` as a manifest; returns its SHA-256."""
    for uid, split in assignment.items():
        if split not in SPLITS:
            raise ManifestError(f"series {uid}: unknown split {split!r}")
    lines = ["series_uid,split"] + [f"{uid},{assignment[uid]}" for uid in sorted(assignment)]
    data = ("\n".join(lines) + "\n").encode()
    pathlib.Path(path).write_bytes(data)
    return hashlib.sha256(data).hexdigest()
