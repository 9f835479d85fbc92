"""Confident learning (Northcutt et al., 2021) over a trajectory's mean probabilities.

Legend: N samples, C classes, n a chunk of rows.

Input: ``p_avg_NC``, the mean over observed epochs of softmax(z_e) (p-bar), and the given
labels y~.  The rule, as cleanlab's ``find_label_issues`` with ``prune_by_noise_rate``
applies it to out-of-sample probabilities, here applied to the in-sample trajectory:

1. per-class thresholds t_j = mean of p-bar_ij over the samples labelled j;
2. a sample's confident class y^ is the most probable of its candidate classes
   {j : p-bar_ij >= t_j - 1e-6}; samples with no candidate are not counted;
3. the confident joint Q[y~, y^] counts them; its diagonal is raised to at least 1, then
   each row is scaled to its class's size and the whole to N, and rounded keeping the row
   totals (the "calibrated" joint); each class keeps at least one sample;
4. for every given class k and every other class j, the Q[k, j] samples labelled k with the
   largest p-bar_ij - p-bar_ik are flagged;
5. a flagged sample whose most probable class is its given label is unflagged.

The default ``filter_by="margin"`` keeps steps 1-2 and flags instead the n valid samples with
the lowest label margin p-bar_y~ - max_{k != y~} p-bar_k, n = the confident joint's
off-diagonal count (the samples whose confident class is not their label), then step 5; ties:
the lower index first.  The variant ``"self_confidence"`` (cleanlab's ``low_self_confidence``) flags the n
lowest p-bar at the label instead.  Why the margin is the default (declared in
``benchmarks/RESULTS.md`` before its test): the off-diagonal count of the in-sample joint is
close to the number of flips, where the calibrated joint of ``noise_rate`` overcounts (by a
fifth on Fashion-MNIST); and a systematic flip (a fixed share of class c labelled c + 1) leaves
the flipped samples with a fair p-bar at their label but a far larger one elsewhere, which the
margin sees and p-bar at the label alone does not.

Action: a flagged sample's suggested label is its most probable other class; it is to be
relabelled when the trajectory agrees with it (p-bar of the suggestion >= ``agree``: on
average over the epochs it held at least that much of the probability), else removed.

Continuous scores (any threshold, e.g. for AUROC): ``label_margin`` = p-bar_y~ - max_{k != y~}
p-bar_k (low = likely mislabelled) and ``p_avg_label`` = p-bar_y~.

Steps 2 and 4 are numba kernels (:mod:`dprune.kernels.confident_cpu`) that read the rows in
place; the rest is arithmetic on [N] vectors and the [C, C] joint.

Memory: ``p_avg_NC`` (float32) may be a memory map; it is read in place, in row chunks of
``chunk_bytes`` (steps 1-2) and one class's rows at a time (step 4), so the working memory is
a few [N] vectors and [C, C].  (The pages of a mapped ``p_avg_NC`` count in the process's RSS
once read: file pages the system can reclaim.)
"""
from __future__ import annotations

import numpy as np

from dprune.kernels.confident_cpu import confident_rows, flag_largest_margins

EPS = 1e-6  # cleanlab's slack on the thresholds


def round_preserving_row_totals(x_KK: np.ndarray) -> np.ndarray:
    """Round each row to integers with the row's rounded total (largest remainders first)."""
    out = np.floor(x_KK).astype(np.int64)
    totals = np.rint(x_KK.sum(1)).astype(np.int64)
    for r in range(len(x_KK)):
        short = totals[r] - out[r].sum()
        if short > 0:
            rem = x_KK[r] - np.floor(x_KK[r])
            out[r, np.argsort(-rem, kind="stable")[:short]] += 1
    return out


def calibrated_joint(joint_KK: np.ndarray, counts_K: np.ndarray) -> np.ndarray:
    """Step 3 of the module docstring: integer counts [K, K] whose rows sum to the class sizes."""
    q = joint_KK.astype(np.float64)
    np.fill_diagonal(q, np.maximum(np.diag(q), 1))
    q = q / q.sum(1, keepdims=True) * counts_K[:, None]
    total = q.sum()
    if total > 0:
        q = q / total * counts_K.sum()
    q = round_preserving_row_totals(q)
    # Each class keeps at least one sample: shrink its off-diagonal counts if they take all.
    for k in range(len(q)):
        off = q[k].sum() - q[k, k]
        room = max(counts_K[k] - 1, 0)
        if off > room:
            scaled = np.where(np.arange(len(q)) == k, 0.0, q[k] * room / off)
            q[k] = round_preserving_row_totals(scaled[None])[0]
            q[k, k] = counts_K[k] - q[k].sum()
    return q


def confident_learning(p_avg_NC, labels_N: np.ndarray, valid_N: np.ndarray, *, agree: float = 0.5,
                       filter_by: str = "margin", chunk_bytes: int = 16 << 20) -> dict[str, np.ndarray]:
    """Flags and continuous label scores of confident learning (see the module docstring).

    Parameters
    ----------
    p_avg_NC : array [N, C] (memory map allowed)
        Mean probabilities; rows of invalid samples are ignored whatever they hold.
    labels_N : int array [N]
    valid_N : bool array [N]
        Samples to judge (observed, finite); the others are never flagged and get NaN scores.
    agree : float
        p-bar of the suggested class needed to relabel rather than remove.
    filter_by : "margin", "noise_rate" or "self_confidence"
        The flagging rule (see the module docstring).
    chunk_bytes : int
        Size of the float32 row chunks read at a time (their temporaries are a few times that).

    Returns
    -------
    dict of [N] arrays: ``confident`` (bool, flagged), ``confident_label`` (int64, the
    suggestion; -1 when not flagged), ``confident_relabel`` (bool), ``label_margin`` and
    ``p_avg_label`` (float32, NaN for invalid samples).
    """
    N, C = p_avg_NC.shape
    p32 = np.asarray(p_avg_NC) if p_avg_NC.dtype == np.float32 else np.asarray(p_avg_NC, np.float32)
    chunk_rows = max(1, chunk_bytes // (4 * C))
    y = np.asarray(labels_N, np.int64)
    valid = np.asarray(valid_N, bool)
    counts = np.bincount(y[valid], minlength=C).astype(np.int64)

    # 1. thresholds
    sums = np.zeros(C)
    for a in range(0, N, chunk_rows):
        b = min(a + chunk_rows, N)
        v = np.flatnonzero(valid[a:b])
        np.add.at(sums, y[a + v], np.asarray(p_avg_NC[a + v, y[a + v]], np.float64))  # only p-bar at the label
    with np.errstate(invalid="ignore", divide="ignore"):
        thresholds = np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)

    # 2. confident classes, the joint, the continuous scores, the most probable other class:
    # one read of each valid row (the numba kernel), then whole-array arithmetic on [N] vectors.
    conf = np.empty(N, np.int64)
    other = np.empty(N, np.int64)
    py = np.empty(N, np.float64)
    p_other = np.empty(N, np.float64)
    for a in range(0, N, chunk_rows):
        b = min(a + chunk_rows, N)
        confident_rows(p32[a:b], y[a:b], valid[a:b], thresholds, EPS, conf[a:b],
                       other[a:b], py[a:b], p_other[a:b])
    # The kernel leaves invalid rows at -1 (conf, other) and NaN (py, p_other).
    has = conf >= 0
    joint = np.bincount(y[has] * C + conf[has], minlength=C * C).reshape(C, C).astype(np.int64)
    margin = (py - p_other).astype(np.float32)
    p_label = py.astype(np.float32)
    # The given label is the (first) most probable class once raised by EPS.
    with np.errstate(invalid="ignore"):
        label_is_top = valid & ((py + EPS > p_other) | ((py + EPS == p_other) & (y < other)))

    flagged = np.zeros(N, bool)
    if filter_by in ("margin", "self_confidence"):
        # The confident joint's off-diagonal count of the lowest margins (or p-bar at the label).
        n_issues = int(joint.sum() - np.trace(joint))
        key = margin if filter_by == "margin" else py
        flagged[np.argsort(np.where(valid, key, np.inf), kind="stable")[:n_issues]] = True
        if filter_by == "margin":  # step 5: the given label is the most probable class
            flagged &= ~label_is_top
    elif filter_by == "noise_rate":
        # 3. calibrated joint -> how many to flag per (given class, other class)
        q = calibrated_joint(joint, counts)
        # 4. per given class, the largest margins towards each other class
        key = np.where(valid, y, C)
        rows_by_class = np.argsort(key, kind="stable")  # the valid samples of each class, in index order
        starts = np.searchsorted(key[rows_by_class], np.arange(C + 1))
        flag_largest_margins(p32, rows_by_class, starts, q, flagged)
        # 5. the given label is the most probable class: not an issue
        flagged &= ~label_is_top
    else:
        raise ValueError(f"filter_by must be margin, noise_rate or self_confidence, got {filter_by!r}")
    suggestion = np.where(flagged, other, -1)
    rows = np.flatnonzero(flagged)
    p_sugg = np.zeros(N)
    for a in range(0, len(rows), chunk_rows):
        part = rows[a : a + chunk_rows]
        p_sugg[part] = np.asarray(p_avg_NC[part], np.float64)[np.arange(len(part)), suggestion[part]]
    return {
        "confident": flagged,
        "confident_label": suggestion,
        "confident_relabel": flagged & (p_sugg >= agree),
        "label_margin": margin,
        "p_avg_label": p_label,
    }
