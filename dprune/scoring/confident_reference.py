"""The plain reference of confident learning (the ``confident`` kernel of :mod:`.backends`).

Legend: N samples, C classes.  Loops over samples and classes in float64, for the tests to
compare :mod:`dprune.scoring.confident` (chunked passes, numba kernels) with.
"""
from __future__ import annotations

import numpy as np


def confident_learning_reference(p_avg_NC, labels_N, valid_N, *, agree: float = 0.5,
                                 filter_by: str = "margin", rate: float | None = None) -> dict[str, np.ndarray]:
    """:func:`dprune.scoring.confident.confident_learning`, one sample and one class at a time, in
    float64: the rule of that module's docstring, written without its vectorised code and
    kernels (same arguments and outputs; slow, for tests and small inputs)."""
    from .params import check_confident_rule

    check_confident_rule(filter_by, rate)
    p, y, valid = np.asarray(p_avg_NC, np.float64), np.asarray(labels_N, np.int64), np.asarray(valid_N, bool)
    N, C = p.shape
    counts = np.array([sum(1 for i in range(N) if valid[i] and y[i] == j) for j in range(C)])
    t = np.array([np.mean([p[i, j] for i in range(N) if valid[i] and y[i] == j]) if counts[j] else np.inf
                  for j in range(C)])
    joint = np.zeros((C, C))
    for i in range(N):
        if not valid[i]:
            continue
        cands = [j for j in range(C) if p[i, j] >= t[j] - 1e-6]
        if cands:
            best = max(cands, key=lambda j: (p[i, j], -j))  # first index among equal maxima
            joint[y[i], best] += 1
    for j in range(C):
        joint[j, j] = max(joint[j, j], 1)
    q = joint / joint.sum(1, keepdims=True) * counts[:, None]
    q = q / q.sum() * counts.sum() if q.sum() else q

    def round_rows(x):
        out = np.floor(x).astype(int)
        for r in range(len(x)):
            short = int(round(x[r].sum())) - out[r].sum()
            rem = x[r] - np.floor(x[r])
            for c in sorted(range(len(rem)), key=lambda c: (-rem[c], c))[:max(short, 0)]:
                out[r, c] += 1
        return out

    q = round_rows(q)
    for k in range(C):
        off = q[k].sum() - q[k, k]
        room = max(counts[k] - 1, 0)
        if off > room:
            scaled = np.array([0.0 if c == k else q[k, c] * room / off for c in range(C)])
            q[k] = round_rows(scaled[None])[0]
            q[k, k] = counts[k] - q[k].sum()
    flagged = np.zeros(N, bool)
    def label_margin(i):
        return p[i, y[i]] - max(p[i, c] for c in range(C) if c != y[i])

    if filter_by in ("self_confidence", "margin"):
        n_off = (int(sum(joint[a, b] for a in range(C) for b in range(C) if a != b)) if rate is None
                 else int(np.rint(rate * sum(valid))))
        key = (lambda i: p[i, y[i]]) if filter_by == "self_confidence" else label_margin
        ranked = sorted((i for i in range(N) if valid[i]), key=lambda i: (key(i), i))
        for i in ranked[:n_off]:
            flagged[i] = True
    for k in range(C) if filter_by == "noise_rate" else ():
        members = [i for i in range(N) if valid[i] and y[i] == k]
        for j in range(C):
            if j == k or q[k, j] <= 0:
                continue
            ranked = sorted(members, key=lambda i: (-(p[i, j] - p[i, k]), i))
            for i in ranked[: q[k, j]]:
                flagged[i] = True
    out = {"confident": np.zeros(N, bool), "confident_label": np.full(N, -1), "confident_relabel": np.zeros(N, bool),
           "label_margin": np.full(N, np.nan), "p_avg_label": np.full(N, np.nan)}
    for i in range(N):
        if not valid[i]:
            continue
        row = p[i].copy()
        others = [c for c in range(C) if c != y[i]]
        best_other = max(others, key=lambda c: (row[c], -c))
        out["label_margin"][i] = row[y[i]] - row[best_other]
        out["p_avg_label"][i] = row[y[i]]
        bumped = row.copy()
        bumped[y[i]] += 1e-6
        if flagged[i] and (filter_by == "self_confidence" or rate is not None or int(np.argmax(bumped)) != y[i]):
            out["confident"][i] = True
            out["confident_label"][i] = best_other
            out["confident_relabel"][i] = row[best_other] >= agree
    return out
