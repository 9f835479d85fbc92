"""The one rule for a sample's value in an epoch: the mean of that epoch's observations.

Legend: n rows (samples), C classes.

Observations are summed and divided in fp32, and merged into a mean already held as
``m <- m + (sum_new - k * m) / (c + k)`` (``c`` observations held, ``k`` new ones); for a row
not yet observed (``c = 0``, ``m = 0``) this is ``sum_new / k`` exactly.  The mean is stored in
the store's dtype; in an fp16 store a finite mean beyond +-65504 is saturated to +-65504 (and
counted), so that a sample is not turned non-finite by the storage format.  NaN and Inf
observations propagate (the scorers flag them).  The full store applies the rule batch by
batch (:func:`dprune.store.full.merge_batch`), the summary store once per epoch on its sums.
"""
from __future__ import annotations

import numpy as np

FP16_MAX = float(np.finfo(np.float16).max)


def merge_means(m_old_nC, c_old_n, sums_nC: np.ndarray, k_n) -> np.ndarray:
    """fp32 [n, C] mean of ``c_old`` observations with mean ``m_old`` and ``k`` more that sum to ``sums``.

    Rows where ``c_old + k == 0`` (never observed) are 0.  One new array, four passes over it.
    """
    m_old = np.asarray(m_old_nC, np.float32)
    k = np.asarray(k_n, np.float32)
    total = np.asarray(c_old_n, np.float32) + k
    sums = np.asarray(sums_nC, np.float32)
    out = np.empty(sums.shape, np.float32)
    np.multiply(k[:, None], m_old, out=out)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        np.subtract(sums, out, out=out)
        np.divide(out, total[:, None], out=out)
        np.add(out, m_old, out=out)
    out[total == 0] = 0
    return out


def to_store_dtype(m_nC: np.ndarray, dtype) -> tuple[np.ndarray, int]:
    """``(m in the store dtype, how many finite values were saturated)``; ``m_nC`` may be modified."""
    with np.errstate(over="ignore"):
        out = m_nC.astype(dtype)
    # Only a value that rounded to +-65504 or beyond (or a NaN) can need saturating: look closer then.
    if out.dtype != np.float16 or not ((out.view(np.uint16) & 0x7FFF) >= 0x7BFF).any():
        return out, 0
    with np.errstate(invalid="ignore"):
        over = np.isfinite(m_nC) & (np.abs(m_nC) > FP16_MAX)
    saturated = int(over.sum())
    if saturated:
        np.clip(m_nC, -FP16_MAX, FP16_MAX, out=m_nC, where=over)
        out = m_nC.astype(dtype)
    return out, saturated
