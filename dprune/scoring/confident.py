"""Confident learning (Northcutt et al., 2021) over a trajectory's probabilities.

Legend: N samples, C classes, n a chunk of rows.

Input: ``p_avg_NC``, one probability vector per sample from the trajectory, and the given
labels y~.  Scoring passes the soft label softmax(mean_e z_e) by default, or the mean over
observed epochs of softmax(z_e) (p-bar) with the parameter ``probs="mean_softmax"``
(:mod:`dprune.scoring.params`); below, p-bar names whichever it is.  The rule, as cleanlab's ``find_label_issues`` with ``prune_by_noise_rate``
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
the lower index first.  The variant ``"self_confidence"`` (cleanlab's ``low_self_confidence``)
flags the n lowest p-bar at the label instead.  With a ``rate`` (a share of wrong labels the
caller knows, e.g. measured on hand-checked labels) either rule flags n = round(rate x the
valid samples) and skips step 5: where the noise looks like its new class, the flipped samples
keep their label as the most probable class, and no count read off p-bar finds them
(``benchmarks/RESULTS.md``, the detector's count from hand-checked labels).  Why the margin is the default (declared in
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

Passes: one read of the rows, in chunks, in order (:class:`ConfidentSpill`), keeps step 1's
sums, p-bar at each label and each row's K most probable classes (K = ``top_k``, 4 by default;
value and index, 8 bytes each) in an unnamed file; nothing of the rows themselves.  Step 2
then runs on those K entries alone: the first entry at or above its class's threshold is the
confident class, and the first whose class is not the label is the most probable other one.
A row none of whose K entries reaches its threshold is decided there as well when its K-th
value is below every threshold (then no class outside the K can be a candidate); otherwise
its chunk is read again (the caller passes a way to read chunks again: an array's, or a second
pass over a store restricted to the chunks that hold such rows: on the Fashion-MNIST
trajectories of ``benchmarks/noisy_method.py``, 0 to 4 rows of 10,000).  ``noise_rate``'s step
4 needs whole rows and reads every chunk again.  So working memory is a chunk, a few [N]
vectors, at most N heap entries and [C, C], whatever N; the file is 8 K bytes a row (32 where
the row is 4 C: 4,000 at C = 1,000).  Step 2's second read and step 4 are numba kernels
(:mod:`dprune.kernels.confident_cpu`); the rest is arithmetic on [N] vectors, [n, K] chunks and
the joint.
"""
from __future__ import annotations

import tempfile
from typing import Callable, Iterator

import numpy as np

from dprune.kernels.confident_cpu import confident_rows, float32_at_or_above, push_margins, top_classes
from dprune.scoring.params import check_confident_rule, check_param
from dprune.scoring.streams import chunk_ranges

EPS = 1e-6  # cleanlab's slack on the thresholds
TOP_K = 4  # classes kept per row between the passes (module docstring)


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


# Chunks of (start, stop, p_nC float32) over the N rows in order, a fresh iterator per call:
# ``chunks(only)`` gives just the chunks holding a sample of the bool [N] mask ``only`` (all for None).
Chunks = Callable[[np.ndarray | None], Iterator[tuple[int, int, np.ndarray]]]


def confident_learning(p_avg_NC, labels_N: np.ndarray, valid_N: np.ndarray, *, agree: float = 0.5,
                       filter_by: str = "margin", rate: float | None = None, chunk_bytes: int = 16 << 20,
                       top_k: int = TOP_K) -> dict[str, np.ndarray]:
    """Flags and continuous label scores of confident learning (see the module docstring).

    Parameters
    ----------
    p_avg_NC : array [N, C] (memory map allowed)
        The probabilities it reads (the soft labels or p-bar); rows of invalid samples are
        ignored whatever they hold.
    labels_N : int array [N]
    valid_N : bool array [N]
        Samples to judge (observed, finite); the others are never flagged and get NaN scores.
    agree : float
        Probability of the suggested class needed to relabel rather than remove.
    filter_by : "margin", "noise_rate" or "self_confidence"
        The flagging rule (see the module docstring).
    rate : float in [0, 1], optional
        The share of the valid samples to flag, instead of the confident joint's count
        (``margin`` and ``self_confidence`` only).
    chunk_bytes : int
        Size of the float32 row chunks read at a time (their temporaries are a few times that).
    top_k : int
        Classes kept per row between the passes (>= 2; the result does not depend on it).

    Returns
    -------
    dict of [N] arrays: ``confident`` (bool, flagged), ``confident_label`` (int64, the
    suggestion; -1 when not flagged), ``confident_relabel`` (bool), ``label_margin`` and
    ``p_avg_label`` (float32, NaN for invalid samples).
    """
    N, C = p_avg_NC.shape
    rows = max(1, chunk_bytes // (4 * C))
    valid = np.asarray(valid_N, bool)

    def chunks(only=None):
        for a, b in chunk_ranges(N, rows, only):
            yield a, b, np.ascontiguousarray(p_avg_NC[a:b], np.float32)

    spill = ConfidentSpill(labels_N, C, chunk_bytes=chunk_bytes, top_k=top_k)
    try:
        for a, b, p in chunks(None):
            spill.add(a, p, valid[a:b])
        return spill.finish(chunks, agree=agree, filter_by=filter_by, rate=rate)
    finally:
        spill.close()


def _judge(conf: np.ndarray, other: np.ndarray, py: np.ndarray, p_other: np.ndarray, y: np.ndarray,
           valid: np.ndarray, counts: np.ndarray, chunks: Chunks, *, agree: float, filter_by: str,
           rate: float | None) -> dict:
    """Steps 2 (from its [N] results) to 5: the joint, the flags and the continuous scores."""
    N, C = len(y), len(counts)
    has = conf >= 0
    joint = np.bincount(y[has] * C + conf[has], minlength=C * C).reshape(C, C).astype(np.int64)
    margin = (py - p_other).astype(np.float32)
    # The given label is the (first) most probable class once raised by EPS.
    with np.errstate(invalid="ignore"):
        label_is_top = valid & ((py + EPS > p_other) | ((py + EPS == p_other) & (y < other)))

    if filter_by in ("margin", "self_confidence"):
        # The lowest margins (or p-bar at the label): as many as the confident joint's off-diagonal,
        # or the given share of the valid samples.
        n_issues = int(joint.sum() - np.trace(joint)) if rate is None else int(np.rint(rate * valid.sum()))
        key = margin if filter_by == "margin" else py
        flagged = np.zeros(N, bool)
        flagged[np.argsort(np.where(valid, key, np.inf), kind="stable")[:n_issues]] = True
        if filter_by == "margin" and rate is None:  # step 5: the given label is the most probable class
            flagged &= ~label_is_top
    else:
        # 3. calibrated joint -> how many to flag per (given class, other class); 4. the largest margins
        flagged = _largest_margins(chunks, y, valid, calibrated_joint(joint, counts), counts)
        # 5. the given label is the most probable class: not an issue
        flagged &= ~label_is_top
    # The suggestion is the most probable other class, so its p-bar is p_other.
    return {
        "confident": flagged,
        "confident_label": np.where(flagged, other, -1),
        "confident_relabel": flagged & (np.where(flagged, p_other, 0.0) >= agree),
        "label_margin": margin,
        "p_avg_label": py.astype(np.float32),
    }


def _largest_margins(chunks: Chunks, y: np.ndarray, valid: np.ndarray, q_KK: np.ndarray,
                     counts_K: np.ndarray) -> np.ndarray:
    """Step 4: for every given class k and other class j, flag the ``q_KK[k, j]`` valid samples
    labelled k with the largest p_j - p_k (float64; ties: the lower index first), in one pass."""
    K = len(counts_K)
    quota = q_KK.copy()
    np.fill_diagonal(quota, 0)
    # A quota that reaches the class's size flags the whole class: no heap needed for it.
    whole = (counts_K > 0) & (quota >= counts_K[:, None]).any(1)
    ks, js = np.nonzero((quota > 0) & ~whole[:, None])  # the active pairs, by class
    pair_ptr = np.searchsorted(ks, np.arange(K + 1)).astype(np.int64)
    cap = quota[ks, js]
    heap_off = np.concatenate([[0], np.cumsum(cap)]).astype(np.int64)
    heap_d = np.empty(heap_off[-1], np.float64)
    heap_i = np.empty(heap_off[-1], np.int64)
    heap_n = np.zeros(len(cap), np.int64)
    js = js.astype(np.int64)
    if len(cap):
        has_pairs = pair_ptr[1:] > pair_ptr[:-1]
        for a, b, p in chunks(None):
            key = np.where(valid[a:b] & has_pairs[y[a:b]], y[a:b], K)
            order = np.argsort(key, kind="stable")
            starts = np.searchsorted(key[order], np.arange(K + 1)).astype(np.int64)
            push_margins(p, a, order, starts, pair_ptr, js, heap_off, heap_n, heap_d, heap_i)
    flagged = valid & whole[y]
    filled = np.arange(heap_off[-1]) - np.repeat(heap_off[:-1], cap) < np.repeat(heap_n, cap)
    flagged[heap_i[filled]] = True
    return flagged


class ConfidentSpill:
    """Confident learning over rows that arrive once, in order, in memory bounded by a chunk.

    :meth:`add` takes each chunk of rows (while a store is scored, the rows its kernel made):
    it sums step 1, keeps p-bar at each valid row's label, and appends each row's ``top_k``
    most probable classes to an unnamed file (deleted by the system once closed).
    :meth:`finish` runs the rule on those entries, and reads whole rows again only where they
    cannot decide (module docstring, "Passes"); ``rows_reread`` then says how many rows that was
    (every valid one for ``noise_rate``).  ``directory``: where the file goes (the store's;
    the system's temporary folder when that one is not writable).
    """

    def __init__(self, labels_N: np.ndarray, n_classes: int, directory=None, *, chunk_bytes: int = 16 << 20,
                 top_k: int = TOP_K):
        if top_k < 2:
            raise ValueError(f"top_k must be >= 2 (the label and the most probable other class), got {top_k}")
        self.labels = np.asarray(labels_N, np.int64)
        N = len(self.labels)
        self.valid = np.zeros(N, bool)
        self.sums = np.zeros(n_classes)
        self.p_label = np.full(N, np.nan)
        self.n_classes = n_classes
        self.k = min(n_classes, top_k)
        self.rows_reread = 0
        self._rows = 0
        self._chunk_rows = max(1, chunk_bytes // (8 * self.k))
        try:
            self._file = tempfile.TemporaryFile(dir=directory, buffering=0)
        except OSError:
            self._file = tempfile.TemporaryFile(buffering=0)

    def add(self, start: int, p_nC: np.ndarray, valid_n: np.ndarray) -> None:
        """Rows ``[start, start + n)`` of p-bar (float32 [n, C]) and which of them are valid."""
        if start != self._rows or p_nC.shape[1:] != (self.n_classes,) or p_nC.dtype != np.float32:
            raise ValueError(f"expected float32 rows [n, {self.n_classes}] from row {self._rows}, got "
                             f"{p_nC.dtype} {p_nC.shape} from row {start}")
        p = np.ascontiguousarray(p_nC)
        n, K = len(p), self.k
        stop = start + n
        valid = self.valid[start:stop]
        valid[:] = valid_n
        y = self.labels[start:stop]
        v = np.flatnonzero(valid)
        self.p_label[start + v] = p[v, y[v]]
        np.add.at(self.sums, y[v], self.p_label[start + v])  # step 1's numerators, in row order
        top_v, top_i = np.empty((n, K), np.float32), np.empty((n, K), np.int32)
        top_classes(p, valid, top_v, top_i)
        record = np.concatenate([top_v, top_i.view(np.float32)], axis=1)  # K values, K indices (int32 bits)
        view = memoryview(record).cast("B")
        while len(view):  # a raw file may write less than asked
            view = view[self._file.write(view):]
        self._rows = stop

    def _records(self):
        """(start, stop, values [n, K] float32, indices [n, K] int32) over all rows, in order."""
        N, K = len(self.labels), self.k
        buf = np.empty((min(self._chunk_rows, N), 2 * K), np.float32)
        self._file.seek(0)
        for a, b in chunk_ranges(N, self._chunk_rows):
            view = memoryview(buf[: b - a]).cast("B")
            while len(view):
                got = self._file.readinto(view)
                if not got:
                    raise OSError(f"the confident-learning spill file ended at row {a} of {N}")
                view = view[got:]
            yield a, b, buf[: b - a, :K], buf[: b - a, K:].view(np.int32)

    def finish(self, rows: Chunks, *, agree: float = 0.5, filter_by: str = "margin",
               rate: float | None = None) -> dict[str, np.ndarray]:
        """The detector's arrays (as :func:`confident_learning`); closes the file.

        ``rows``: the rows :meth:`add` took, again (:data:`Chunks`), called only when whole rows
        are needed."""
        agree, filter_by = check_param("confident", "agree", agree), check_param("confident", "filter_by", filter_by)
        rate = check_param("confident", "rate", rate)
        check_confident_rule(filter_by, rate)
        N, C, K = len(self.labels), self.n_classes, self.k
        if self._rows != N:
            raise ValueError(f"p-bar has {self._rows} of {N} rows")
        y, valid = self.labels, self.valid
        counts = np.bincount(y[valid], minlength=C).astype(np.int64)
        try:
            # 1. thresholds, as the float32 bounds the rows are compared with
            with np.errstate(invalid="ignore", divide="ignore"):
                thresholds = np.where(counts > 0, self.sums / np.maximum(counts, 1), np.inf)
            t32 = float32_at_or_above(thresholds - EPS)
            # (a NaN threshold, from a NaN at a valid row's label outside the contract, is no candidate's)
            lowest = np.min(t32, initial=np.inf, where=~np.isnan(t32))
            # 2. from each row's K entries (decreasing, the lower index first on ties): the first
            # at or above its threshold is the confident class, the first not the label the other.
            conf = np.full(N, -1, np.int64)
            other = np.full(N, -1, np.int64)
            p_other = np.full(N, np.nan)
            undecided = np.zeros(N, bool)
            for a, b, top_v, top_i in self._records():
                r = np.arange(b - a)
                ok = valid[a:b, None]
                qual = ok & (top_v >= t32[np.maximum(top_i, 0)])
                found = qual.any(1)
                conf[a:b] = np.where(found, top_i[r, qual.argmax(1)], -1)
                if K < C:  # a class outside the K could still be a candidate
                    undecided[a:b] = valid[a:b] & ~found & (top_v[:, K - 1] >= lowest)
                not_y = ok & (top_i != y[a:b, None])
                at = not_y.argmax(1)
                has_other = not_y.any(1)
                other[a:b] = np.where(has_other, top_i[r, at], -1)
                p_other[a:b] = np.where(has_other, top_v[r, at], -np.inf)
            p_other[~valid] = np.nan
            if undecided.any():
                self._reread(rows, undecided, t32, conf)
            if filter_by == "noise_rate":
                self.rows_reread = int(valid.sum())
            return _judge(conf, other, self.p_label, p_other, y, valid, counts, rows, agree=agree,
                          filter_by=filter_by, rate=rate)
        finally:
            self.close()

    def _reread(self, rows: Chunks, which_N: np.ndarray, t32_C: np.ndarray, conf_N: np.ndarray) -> None:
        """Step 2's confident class of the rows ``which_N``, from whole rows."""
        self.rows_reread = int(which_N.sum())
        for a, b, p in rows(which_N):  # only the chunks holding such rows
            w, n = which_N[a:b], b - a
            conf, other, py, po = (np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n), np.empty(n))
            confident_rows(p, self.labels[a:b], w, t32_C, conf, other, py, po)
            conf_N[a:b][w] = conf[w]

    def close(self) -> None:
        self._file.close()
