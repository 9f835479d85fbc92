"""The one label validator of the package: every stage that takes labels checks them here."""
from __future__ import annotations

import numpy as np

MAX_CLASSES = 100_000
"""Most classes a dataset, store or manifest may have.  ImageNet-21k has 21,841 classes and
MSMT17 4,101 training identities; a count beyond this comes from a corrupt or hostile label
file (one class id of 3,000,000 in CUB's 38-byte ``image_class_labels.txt`` would build a
6 GB classifier)."""


def check_class_count(n_classes, where: str) -> int:
    """``n_classes`` as an int in [1, :data:`MAX_CLASSES`], or a ``ValueError`` naming ``where``."""
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) \
            or not 1 <= n_classes <= MAX_CLASSES:
        raise ValueError(f"{where}: the number of classes must be an integer in [1, {MAX_CLASSES:,}], "
                         f"got {n_classes!r}")
    return int(n_classes)


def validate_labels(labels, n_classes: int | None = None, n_samples: int | None = None, *,
                    what: str = "labels") -> np.ndarray:
    """Return ``labels`` as a new int64 array [N], or raise ``ValueError`` naming the problem.

    Parameters
    ----------
    labels : array-like [N]
        Class indices.  The dtype must be an integer type: floats (even 1.0) and booleans are
        refused, so a mix-up of labels with probabilities or masks cannot pass silently.
    n_classes : int, optional
        When given, every label must lie in ``[0, n_classes)``.
    n_samples : int, optional
        When given, the length N must equal it.
    what : str
        Name used in the messages (``"override labels"``, ...).
    """
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D [N], got shape {arr.shape}")
    if n_samples is not None and len(arr) != n_samples:
        raise ValueError(f"{what} have length {len(arr)}, expected N = {n_samples}")
    if arr.size and (arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{what} must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and n_classes is not None:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= n_classes:
            bad = int(np.flatnonzero((arr < 0) | (arr >= n_classes))[0])
            raise ValueError(f"{what} must lie in [0, {n_classes}), got range [{lo}, {hi}] "
                             f"(first bad: {arr[bad]} at index {bad})")
    return arr
