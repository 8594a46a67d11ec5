"""`python training/split.py DATA --out manifest.csv [--val 0.2] [--test 0] [--seed 0]`

Writes the split manifest (see manifest.py) for the series of one data set: a seeded shuffle of
the sorted series UIDs, cut into val, test and train (the rest). Splitting by series (CT) is the
point: all nodules and candidates of one CT land on the same side. Prints the manifest's SHA-256.
"""
from __future__ import annotations

import argparse
import random
import sys

import datasets
import manifest


def assign(uids: list[str], val: float, test: float, seed: int) -> dict[str, str]:
    """Seeded, order-independent assignment of series to splits (at least one train series)."""
    uids = sorted(set(uids))
    random.Random(seed).shuffle(uids)
    n_val = round(len(uids) * val)
    n_test = round(len(uids) * test)
    if val > 0 and n_val == 0 and len(uids) > 1:
        n_val = 1
    if n_val + n_test >= len(uids):
        raise manifest.ManifestError(f"{len(uids)} series leave none for training at val={val}, test={test}")
    out = {}
    for k, uid in enumerate(uids):
        out[uid] = "val" if k < n_val else "test" if k < n_val + n_test else "train"
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="data set folder (LUNA16 layout or DICOM series + annotations.csv)")
    ap.add_argument("--out", required=True, help="manifest CSV to write")
    ap.add_argument("--val", type=float, default=0.2, help="fraction of series for validation")
    ap.add_argument("--test", type=float, default=0.0, help="fraction of series held out for testing")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        ds = datasets.open_dataset(a.data)
        digest = manifest.write(a.out, assign(ds.series_uids, a.val, a.test, a.seed))
    except (datasets.DatasetError, manifest.ManifestError) as e:
        print(f"split: {e}", file=sys.stderr)
        return 2
    m = manifest.Manifest(a.out)
    print(f"{a.out}: train {len(m.series('train'))}, val {len(m.series('val'))}, "
          f"test {len(m.series('test'))} series; sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
