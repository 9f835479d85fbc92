"""Confident learning's passes over the rows of p-bar, on the CPU (numba), one chunk of rows at a time.

Legend: n rows of a chunk, C classes, K = C given classes (in :func:`push_margins`; in
:func:`top_classes`, K is the number of entries kept a row), P active (given class, other class) pairs.

Each takes the rows in chunks (any number of calls, rows in increasing order), so memory stays
bounded by the chunk: :func:`top_classes` keeps each row's K most probable classes in the one
pass over the rows; :func:`confident_rows` (step 2, for the rows those K cannot decide) and
:func:`push_margins` (step 4) read whole rows again.  Together they are
:func:`dprune.scoring.confident.confident_learning`, which the tests compare with an
independent numpy implementation of the whole rule.

:func:`confident_rows`, for every valid row i (p = p-bar_i, float32 [C]; its given label y):

- ``conf[i]``: the most probable candidate class, argmax over {j : p_j >= t_j - eps} of p_j
  (the first on ties), -1 when there is no candidate;
- ``other[i]``: the most probable class other than y (the first on ties);
- ``p_label[i]`` = p_y and ``p_other[i]`` = p_other, widened to float64.

Invalid rows are not read and get -1 / NaN; valid rows must be finite (p-bar of observed,
finite samples is).  The thresholds t_j - eps are float64; since p_j
is a float32, ``p_j >= t_j - eps`` holds exactly when ``p_j >= t32_j``, the smallest float32 at
or above t_j - eps (:func:`float32_at_or_above`), so each row is one pass of vectorised float32
maxima over blocks of classes, then a scan of one block for the first index of each maximum.

:func:`push_margins` keeps, for every active pair (k, j) with a quota q of flags, the q rows
labelled k with the largest p_j - p_k (in float64; ties: the lower index first) in a bounded
min-heap of its own, whose root is the pair's current q-th best.  The heaps together hold at
most sum q <= N entries whatever the chunking, and give exactly the rows a sort of all rows
labelled k by that order would.
"""
from __future__ import annotations

import numba
import numpy as np

from .cpu_intrinsics import maxnum

_NEG_INF32 = np.float32(-np.inf)
_BLOCK = 64  # classes per block of the row maxima


def float32_at_or_above(x_C: np.ndarray) -> np.ndarray:
    """float32 [C]: the smallest float32 >= each float64 of ``x_C`` (+Inf above the float32 range)."""
    x = np.asarray(x_C, np.float64)
    with np.errstate(over="ignore"):
        t = x.astype(np.float32)
    below = t.astype(np.float64) < x
    t[below] = np.nextafter(t[below], np.float32(np.inf))
    return t


@numba.njit(nogil=True, cache=True)
def _row(p, y, t32_C):
    """(conf, other, p_other) of one valid row ``p`` [C] with label ``y``."""
    C = p.shape[0]
    # Maxima over blocks of _BLOCK classes (a fixed trip count, so the loop vectorises),
    # remembering the first block that reaches each row maximum; the first index is then
    # found from that block on.
    best, best_at = _NEG_INF32, 0
    runner, runner_at = _NEG_INF32, 0
    for b in range(C // _BLOCK):
        b0 = b * _BLOCK
        m_conf, m_other = _NEG_INF32, _NEG_INF32
        for k in range(_BLOCK):
            v = p[b0 + k]
            m_conf = maxnum(m_conf, v if v >= t32_C[b0 + k] else _NEG_INF32)
            m_other = maxnum(m_other, v if b0 + k != y else _NEG_INF32)
        if m_conf > best:
            best, best_at = m_conf, b0
        if m_other > runner:
            runner, runner_at = m_other, b0
    tail = C - C % _BLOCK
    m_conf, m_other = _NEG_INF32, _NEG_INF32
    for c in range(tail, C):
        v = p[c]
        m_conf = maxnum(m_conf, v if v >= t32_C[c] else _NEG_INF32)
        m_other = maxnum(m_other, v if c != y else _NEG_INF32)
    if m_conf > best:
        best, best_at = m_conf, tail
    if m_other > runner:
        runner, runner_at = m_other, tail
    conf = -1
    if best > _NEG_INF32:  # else no candidate (p-bar >= 0, so a candidate is never -Inf)
        for c in range(best_at, C):
            if p[c] == best and p[c] >= t32_C[c]:
                conf = c
                break
    other = -1
    for c in range(runner_at, C):
        if p[c] == runner and c != y:
            other = c
            break
    return conf, other, runner


@numba.njit(parallel=True, nogil=True, cache=True)
def confident_rows(p_nC, y_n, valid_n, t32_C, conf_n, other_n, p_label_n, p_other_n):
    """Fill ``conf_n``, ``other_n`` (int64) and ``p_label_n``, ``p_other_n`` (float64) for the rows of ``p_nC``.

    ``t32_C``: the float32 candidate thresholds (see the module docstring).
    """
    n = p_nC.shape[0]
    for i in numba.prange(n):
        if not valid_n[i]:
            conf_n[i] = -1
            other_n[i] = -1
            p_label_n[i] = np.nan
            p_other_n[i] = np.nan
            continue
        conf, other, runner = _row(p_nC[i], y_n[i], t32_C)
        conf_n[i] = conf
        other_n[i] = other
        p_label_n[i] = np.float64(p_nC[i, y_n[i]])
        p_other_n[i] = np.float64(runner)


_TOP_BLOCK = 8  # classes per block of top_classes' maxima


@numba.njit(inline="always")
def _block_max(p, b0, b1):
    m = _NEG_INF32
    if b1 - b0 == _TOP_BLOCK:  # a fixed trip count vectorises
        for k in range(_TOP_BLOCK):
            m = maxnum(m, p[b0 + k])
    else:
        for c in range(b0, b1):
            m = maxnum(m, p[c])
    return m


@numba.njit(inline="always")
def _insert(tv, ti, v, c):
    """Put (v, c) into the sorted entries ``tv``/``ti`` (decreasing; v beats the last one)."""
    pos = tv.shape[0] - 1
    while pos > 0 and tv[pos - 1] < v:
        tv[pos] = tv[pos - 1]
        ti[pos] = ti[pos - 1]
        pos -= 1
    tv[pos] = v
    ti[pos] = c


@numba.njit(parallel=True, nogil=True, cache=True)
def top_classes(p_nC, valid_n, top_v_nK, top_i_nK):
    """Each valid row's K most probable classes, in order: ``top_v_nK`` (float32, decreasing)
    and ``top_i_nK`` (int32; on equal values the lower index first), K = ``top_v_nK.shape[1]``
    <= C.  Invalid rows get -Inf / -1.

    Two passes over a row: the maxima of its blocks of ``_TOP_BLOCK`` classes give theta, the
    K-th largest maximum (K classes reach it, so the K-th largest value does too); then only
    the blocks whose maximum reaches theta are scanned, in order, inserting into the sorted K
    entries.  Most of a row costs two vectorised maxima.
    """
    n, C = p_nC.shape
    K = top_v_nK.shape[1]
    for i in numba.prange(n):
        tv = top_v_nK[i]
        ti = top_i_nK[i]
        for k in range(K):
            tv[k] = _NEG_INF32
            ti[k] = -1
        if not valid_n[i]:
            continue
        p = p_nC[i]
        for b0 in range(0, C, _TOP_BLOCK):  # theta: the K-th largest block maximum
            m = _block_max(p, b0, min(b0 + _TOP_BLOCK, C))
            if m > tv[K - 1]:
                _insert(tv, ti, m, b0)
        theta = tv[K - 1]
        for k in range(K):
            tv[k] = _NEG_INF32
            ti[k] = -1
        for b0 in range(0, C, _TOP_BLOCK):
            b1 = min(b0 + _TOP_BLOCK, C)
            if _block_max(p, b0, b1) < theta:
                continue
            for c in range(b0, b1):
                v = p[c]
                if v > tv[K - 1]:  # a tie loses: its index is higher
                    _insert(tv, ti, v, c)


@numba.njit(inline="always")
def _worse(d_a, i_a, d_b, i_b):
    """Entry a ranks below entry b: a smaller margin, or the same margin at a higher index."""
    return d_a < d_b or (d_a == d_b and i_a > i_b)


@numba.njit(inline="always")
def _sift_down(heap_d, heap_i, base, size, pos):
    while True:
        left = 2 * pos + 1
        if left >= size:
            return
        child = left
        right = left + 1
        if right < size and _worse(heap_d[base + right], heap_i[base + right], heap_d[base + left],
                                   heap_i[base + left]):
            child = right
        if not _worse(heap_d[base + child], heap_i[base + child], heap_d[base + pos], heap_i[base + pos]):
            return
        d, i = heap_d[base + pos], heap_i[base + pos]
        heap_d[base + pos], heap_i[base + pos] = heap_d[base + child], heap_i[base + child]
        heap_d[base + child], heap_i[base + child] = d, i
        pos = child


@numba.njit(parallel=True, nogil=True, cache=True)
def push_margins(p_nC, start, rows_by_class, starts_K1, pair_ptr_K1, pair_j_P, heap_off_P1, heap_n_P, heap_d, heap_i):
    """Step 4 on one chunk: offer every row's margins to its class's heaps.

    ``rows_by_class[starts_K1[k]:starts_K1[k + 1]]``: the chunk's valid rows labelled k (chunk
    positions, increasing), or none for a class whose rows are all flagged anyway.  Active pairs
    of class k: ``pair_j_P[pair_ptr_K1[k]:pair_ptr_K1[k + 1]]`` (the other classes j); pair a's
    heap is ``heap_d/heap_i[heap_off_P1[a]:heap_off_P1[a + 1]]`` (float64 margins, int64 sample
    indices = ``start`` + chunk position), ``heap_n_P[a]`` entries filled.  Classes run in
    parallel; each touches only its own heaps.
    """
    K = starts_K1.shape[0] - 1
    for k in numba.prange(K):
        for r in range(starts_K1[k], starts_K1[k + 1]):
            row = rows_by_class[r]
            idx = start + row
            pk = np.float64(p_nC[row, k])
            for a in range(pair_ptr_K1[k], pair_ptr_K1[k + 1]):
                d = np.float64(p_nC[row, pair_j_P[a]]) - pk
                base = heap_off_P1[a]
                cap = heap_off_P1[a + 1] - base
                size = heap_n_P[a]
                if size < cap:  # not full: add, then restore the heap upwards
                    pos = size
                    heap_d[base + pos], heap_i[base + pos] = d, idx
                    while pos > 0:
                        parent = (pos - 1) // 2
                        if not _worse(heap_d[base + pos], heap_i[base + pos], heap_d[base + parent],
                                      heap_i[base + parent]):
                            break
                        heap_d[base + pos], heap_d[base + parent] = heap_d[base + parent], heap_d[base + pos]
                        heap_i[base + pos], heap_i[base + parent] = heap_i[base + parent], heap_i[base + pos]
                        pos = parent
                    heap_n_P[a] = size + 1
                elif d > heap_d[base]:  # beats the q-th best (a tie loses: this row's index is higher)
                    heap_d[base], heap_i[base] = d, idx
                    _sift_down(heap_d, heap_i, base, size, 0)
