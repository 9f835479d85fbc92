"""Labels checked by a person: a uniform sample to check, and the share of wrong labels it shows.

The confident detector's count read off a run's own probabilities is right for some kinds of
noise and wrong for others (``benchmarks/RESULTS.md``: flips that look like their new class keep
their label as the most probable one).  A few hundred labels drawn uniformly and checked by hand
give the share of wrong labels whatever the kind of noise; ``confident.rate`` then flags that
share of the samples, those with the lowest label margin.

The sheet is a CSV file with the header ``sample_id,given_label,checked_label``: one row per
drawn sample, ``checked_label`` left empty for the person to fill with the class index the
image really shows.  Rows left empty are not counted.
"""
from __future__ import annotations

import csv
import io
import math
import re

import numpy as np

HEADER = ("sample_id", "given_label", "checked_label")


def draw_sample(n_samples: int, m: int, seed: int = 0) -> np.ndarray:
    """``m`` sample indices drawn uniformly without replacement from ``n_samples``, in the draw's
    order (so the first rows of a sheet filled half-way are still a uniform sample)."""
    if not 1 <= m <= n_samples:
        raise ValueError(f"the number to check must be in [1, {n_samples:,}] (the samples), got {m}")
    return np.random.default_rng(seed).choice(n_samples, m, replace=False)


def write_sheet(path, sample_ids, labels_N: np.ndarray, idx: np.ndarray) -> None:
    """The CSV sheet of the drawn samples ``idx``, their checked label empty (written atomically)."""
    from .fileio import atomic_write_text

    out = io.StringIO(newline="")
    w = csv.writer(out)
    w.writerow(HEADER)
    for i in idx:
        w.writerow([sample_ids[i], int(labels_N[i]), ""])
    atomic_write_text(path, out.getvalue())


def read_sheet(path, sample_ids, labels_N: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(given [k], checked [k]) labels of the sheet's filled rows, each checked against the store.

    ``ValueError`` (one line, naming the file and row) for a missing header, an unknown or
    repeated sample id, a given label that is not the store's, a checked label outside
    ``[0, n_classes)``, or a sheet with no filled row.
    """
    where = {sid: i for i, sid in enumerate(sample_ids)}
    given, checked, seen = [], [], set()
    with open(path, newline="", encoding="utf-8-sig") as f:  # a spreadsheet's byte-order mark is skipped
        rows = csv.reader(f)
        head = next(rows, None)
        if head is None or tuple(h.strip() for h in head) != HEADER:
            raise ValueError(f"{path}: the first line must be {','.join(HEADER)}, got {head!r}")
        for line, row in enumerate(rows, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 3:
                raise ValueError(f"{path}, line {line}: expected 3 fields, got {len(row)}")
            sid, g, c = (x.strip() for x in row)
            if sid not in where:
                raise ValueError(f"{path}, line {line}: sample id {sid!r} is not in the store")
            if sid in seen:
                raise ValueError(f"{path}, line {line}: sample id {sid!r} appears twice")
            seen.add(sid)
            if g != str(int(labels_N[where[sid]])):
                raise ValueError(f"{path}, line {line}: given label {g!r} of {sid!r} is not the store's "
                                 f"({int(labels_N[where[sid]])})")
            if not c:
                continue
            if not re.fullmatch(r"[0-9]+", c) or not 0 <= int(c) < n_classes:
                raise ValueError(f"{path}, line {line}: checked label {c!r} must be a class index in "
                                 f"[0, {n_classes})")
            given.append(int(g))
            checked.append(int(c))
    if not given:
        raise ValueError(f"{path}: no row has a checked label")
    return np.asarray(given, np.int64), np.asarray(checked, np.int64)


def wrong_rate(given_k: np.ndarray, checked_k: np.ndarray, z: float = 1.96) -> tuple[float, float, float]:
    """The share of wrong labels and its Wilson interval (95% for the default ``z``)."""
    k, n = int((given_k != checked_k).sum()), len(given_k)
    rate = k / n
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return rate, max(0.0, centre - half), min(1.0, centre + half)
