"""The scorers that read per-epoch statistics, in one numba pass over the samples (CPU).

Legend: E epochs, N samples; T a sample's observed epochs.

Input: the per-epoch fields of :class:`~.common.FusedStats` (``logp_label``, ``correct``,
``logit_margin``, ``el2n``, ``tdds_div``: float32 [E, N], NaN where the sample was not
observed) and which samples are invalid (unobserved or non-finite: their scores are NaN).
Output: float32 [N] per scorer, the same values as the torch reference scorers in
``dprune.scoring.scorers`` (``forgetting``, ``el2n``, ``aum``, ``loss_mean``, ``tdds``,
``dyn_unc``, ``dual``), whose docstrings define them, up to float rounding (computed here in
float64).  Each sample walks its observed epochs once per scorer; the torch reference does the
same with many small tensor operations per chunk, which cost more than the arithmetic at these
sizes.
"""
from __future__ import annotations

import math

import numba
import numpy as np

# Which scorers to compute: bit flags.
FORGETTING, EL2N, AUM, LOSS_MEAN, TDDS, DYN_UNC, DUAL = (1 << k for k in range(7))
NAMES = {"forgetting": FORGETTING, "el2n": EL2N, "aum": AUM, "loss_mean": LOSS_MEAN, "tdds": TDDS,
         "dyn_unc": DYN_UNC, "dual": DUAL}


@numba.njit(cache=True)
def _windows(p, T, window, sample_std):
    """Mean over the windows of J = min(window, T) consecutive values of p[:T] of std (ddof 0), or
    for DUAL of std (ddof 1) * (1 - mean)."""
    J = min(window, T)
    total = 0.0
    for k in range(T - J + 1):
        m = 0.0
        for j in range(k, k + J):
            m += p[j]
        m /= J
        v = 0.0
        for j in range(k, k + J):
            v += (p[j] - m) ** 2
        if sample_std:
            total += math.sqrt(v / (J - 1)) * (1.0 - m)
        else:
            total += math.sqrt(v / J)
    return total / (T - J + 1)


@numba.njit(parallel=True, cache=True)
def _scores(logp, correct, margin, el2n, tdds, invalid, which, el2n_epoch, tdds_window, tdds_decay, dyn_window,
            dual_window, out):
    E, N = logp.shape
    for n in numba.prange(N):
        buf = np.empty(E)
        for k in range(out.shape[0]):
            out[k, n] = np.nan
        if invalid[n]:
            continue
        if which & FORGETTING:
            events, prev, seen, learned = 0, -1.0, 0, False
            for e in range(E):
                c = correct[e, n]
                if c == c:
                    if seen and prev == 1.0 and c == 0.0:
                        events += 1
                    learned |= c == 1.0
                    prev = c
                    seen += 1
            out[0, n] = events if learned else E
        if which & EL2N:
            for e in range(el2n_epoch, -1, -1):
                v = el2n[e, n]
                if v == v:
                    out[1, n] = v
                    break
        if which & (AUM | LOSS_MEAN):
            sm, sl, k = 0.0, 0.0, 0
            for e in range(E):
                if logp[e, n] == logp[e, n]:
                    sm += margin[e, n]
                    sl += logp[e, n]
                    k += 1
            if k:
                out[2, n] = -sm / k
                out[3, n] = -sl / k
        if which & TDDS:
            m = 0
            for e in range(E):
                v = tdds[e, n]
                if v == v:
                    buf[m] = v
                    m += 1
            if m >= 1:
                T = m + 1
                J = min(tdds_window, T)
                total = 0.0
                for k in range(T - J + 1):
                    mean = 0.0
                    for j in range(k, k + J - 1):
                        mean += buf[j]
                    mean /= J - 1
                    sq = 0.0
                    for j in range(k, k + J - 1):
                        sq += (buf[j] - mean) ** 2
                    total += tdds_decay * (1.0 - tdds_decay) ** (T - J - k) * math.sqrt(sq)
                out[4, n] = total
        if which & (DYN_UNC | DUAL):
            T = 0
            for e in range(E):
                v = logp[e, n]
                if v == v:
                    buf[T] = math.exp(v)
                    T += 1
            if T >= 2:
                if which & DYN_UNC:
                    out[5, n] = _windows(buf, T, dyn_window, False)
                if which & DUAL:
                    out[6, n] = _windows(buf, T, dual_window, True)


def epoch_scores_cpu(logp_label_EN, correct_EN, margin_EN, el2n_EN, tdds_EN, invalid_N, *, methods, el2n_epoch=None,
                     tdds_window=10, tdds_decay=0.9, dyn_unc_window=10, dual_window=10) -> dict[str, np.ndarray]:
    """float32 [N] scores of ``methods`` (names in :data:`NAMES`) from the per-epoch fields.

    ``el2n_epoch``: the epoch to read (negative counts from the end; default the last); the
    windows and decay as in the reference scorers.
    """
    arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in (logp_label_EN, correct_EN, margin_EN, el2n_EN,
                                                                   tdds_EN)]
    E, N = arrays[0].shape
    if any(a.shape != (E, N) for a in arrays) or np.shape(invalid_N) != (N,):
        raise ValueError(f"expected five [E, N] arrays and invalid [N]; got {[a.shape for a in arrays]} and "
                         f"{np.shape(invalid_N)}")
    unknown = [m for m in methods if m not in NAMES]
    if unknown:
        raise ValueError(f"no per-epoch kernel for {unknown}")
    epoch = E - 1 if el2n_epoch is None else el2n_epoch
    if not -E <= epoch < E:
        raise ValueError(f"el2n epoch {epoch} is outside the trajectory's {E} epochs")
    which = 0
    for m in methods:
        which |= NAMES[m]
    out = np.empty((len(NAMES), N), np.float64)
    _scores(*arrays, np.ascontiguousarray(invalid_N, dtype=np.bool_), which, epoch % E, int(tdds_window),
            float(tdds_decay), int(dyn_unc_window), int(dual_window), out)
    order = list(NAMES)
    return {m: out[order.index(m)].astype(np.float32) for m in methods}
