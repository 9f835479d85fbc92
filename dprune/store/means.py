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


def merge_means(m_old_nC: np.ndarray, c_old_n: np.ndarray, sums_nC: np.ndarray, k_n: np.ndarray) -> np.ndarray:
    """fp32 [n, C] mean of ``c_old`` observations with mean ``m_old`` and ``k`` more that sum to ``sums``.

    Rows where ``c_old + k == 0`` (never observed) are 0.
    """
    m_old = np.asarray(m_old_nC, np.float32)
    c_old, k = np.asarray(c_old_n, np.float32), np.asarray(k_n, np.float32)
    total = c_old + k
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        m_new = m_old + (np.asarray(sums_nC, np.float32) - k[:, None] * m_old) / total[:, None]
    return np.where(total[:, None] > 0, m_new, np.float32(0))


def to_store_dtype(m_nC: np.ndarray, dtype) -> tuple[np.ndarray, int]:
    """``(m in the store dtype, how many finite values were saturated)``; ``m_nC`` is modified."""
    saturated = 0
    if np.dtype(dtype) == np.float16:
        with np.errstate(invalid="ignore"):
            over = np.isfinite(m_nC) & (np.abs(m_nC) > FP16_MAX)
        if over.any():
            saturated = int(over.sum())
            np.clip(m_nC, -FP16_MAX, FP16_MAX, out=m_nC, where=over)
    with np.errstate(over="ignore"):
        return m_nC.astype(dtype), saturated
