"""Confident learning's pass over the rows of p-bar, on the CPU (numba): one read of each row.

Legend: n rows, C classes.

For every valid row i (p = p-bar_i, float32 [C]; its given label y; per-class thresholds t [C]):

- ``conf[i]``: the most probable candidate class, argmax over {j : p_j >= t_j - eps} of p_j
  (the first on ties), -1 when there is no candidate;
- ``other[i]``: the most probable class other than y (the first on ties);
- ``p_label[i]`` = p_y and ``p_other[i]`` = p_other, widened to float64.

Invalid rows are not read and get -1 / NaN.  This is step 2 of
:func:`dprune.scoring.confident.confident_learning`, which the tests compare with an
independent numpy implementation of the whole rule.  Comparisons are made in float64 (the
float32 probabilities widened), as numpy does when it compares float32 with float64.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, nogil=True, cache=True)
def confident_rows(p_nC, y_n, valid_n, thresholds_C, eps, conf_n, other_n, p_label_n, p_other_n):
    """Fill ``conf_n``, ``other_n`` (int64) and ``p_label_n``, ``p_other_n`` (float64) for the rows of ``p_nC``."""
    n, C = p_nC.shape
    for i in numba.prange(n):
        if not valid_n[i]:
            conf_n[i] = -1
            other_n[i] = -1
            p_label_n[i] = np.nan
            p_other_n[i] = np.nan
            continue
        y = y_n[i]
        best_c, best_v = -1, -np.inf
        best_o, best_ov = -1, -np.inf
        for c in range(C):
            v = np.float64(p_nC[i, c])
            if v >= thresholds_C[c] - eps and (best_c < 0 or v > best_v):
                best_c, best_v = c, v
            if c != y and (best_o < 0 or v > best_ov):
                best_o, best_ov = c, v
        conf_n[i] = best_c
        other_n[i] = best_o
        p_label_n[i] = np.float64(p_nC[i, y])
        p_other_n[i] = best_ov


@numba.njit(parallel=True, nogil=True, cache=True)
def flag_largest_margins(p_NC, rows_by_class, starts_K1, quota_KK, flagged_N):
    """Step 4: for every given class k and other class j, flag the ``quota_KK[k, j]`` samples
    labelled k with the largest p_j - p_k (in float64; ties: the lower index first).

    ``rows_by_class[starts_K1[k]:starts_K1[k + 1]]`` are the rows labelled k, in increasing
    order.  Classes run in parallel; each writes only its own rows of ``flagged_N``.
    """
    K = quota_KK.shape[0]
    for k in numba.prange(K):
        a, b = starts_K1[k], starts_K1[k + 1]
        n_k = b - a
        if n_k == 0:
            continue
        d = np.empty(n_k)
        for j in range(K):
            q = quota_KK[k, j]
            if j == k or q <= 0:
                continue
            if q >= n_k:
                for r in range(n_k):
                    flagged_N[rows_by_class[a + r]] = True
                continue
            for r in range(n_k):
                i = rows_by_class[a + r]
                d[r] = np.float64(p_NC[i, j]) - np.float64(p_NC[i, k])
            # The q-th largest margin; all above it, then the first rows equal to it.
            cut = -np.partition(-d, q - 1)[q - 1]
            left = q
            for r in range(n_k):
                if d[r] > cut:
                    flagged_N[rows_by_class[a + r]] = True
                    left -= 1
            for r in range(n_k):
                if left == 0:
                    break
                if d[r] == cut:
                    flagged_N[rows_by_class[a + r]] = True
                    left -= 1
