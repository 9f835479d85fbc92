"""Independent float64 numpy implementations of every scorer, one sample at a time.

Written from the definitions in the docstrings of ``dprune.scoring.scorers``, without
sharing code with the package, so the vectorised torch scorers are checked against a
second reading of the formulas.
"""
import math

import numpy as np

METHODS = ("entropy", "entropy_prob", "forgetting", "el2n", "aum", "tdds", "dyn_unc", "loss_mean", "dual", "random")


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _h(p):
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def reference_scores(z, c, y, *, window=10, decay=0.9, el2n_epoch=None, seed=0, min_confidence=0.5,
                     entropy_threshold=0.9, margin_threshold=0.1):
    E, N, C = z.shape
    nan = float("nan")
    out = {m: np.full(N, nan) for m in METHODS}
    out.update(soft_argmax=np.full(N, -1), p_label=np.full(N, nan), p_max=np.full(N, nan), margin=np.full(N, nan),
               mislabel=np.zeros(N, bool), outlier=np.zeros(N, bool), nonfinite=np.zeros(N, bool),
               n_observed=np.zeros(N, int))
    u = np.random.default_rng(seed).random(N)
    for i in range(N):
        obs = [e for e in range(E) if c[e, i] > 0]
        out["n_observed"][i] = len(obs)
        if not obs:
            continue
        zi = z[obs, i].astype(np.float64)
        if not np.isfinite(zi).all():
            out["nonfinite"][i] = True
            continue
        yi = int(y[i])
        T = len(obs)
        p = _softmax(zi.mean(0))
        P = _softmax(zi)
        logP = _log_softmax(zi)
        out["entropy"][i] = _h(p)
        out["entropy_prob"][i] = _h(P.mean(0))
        srt = np.sort(p)[::-1]
        out["soft_argmax"][i] = int(np.argmax(p))
        out["p_max"][i] = srt[0]
        out["margin"][i] = srt[0] - (srt[1] if C > 1 else 0.0)
        out["p_label"][i] = p[yi]
        out["mislabel"][i] = np.argmax(p) != yi and srt[0] >= min_confidence
        if C > 1:
            out["outlier"][i] = _h(p) / math.log(C) >= entropy_threshold and out["margin"][i] <= margin_threshold
        correct = np.argmax(zi, 1) == yi
        out["forgetting"][i] = E if not correct.any() else int(np.sum(correct[:-1] & ~correct[1:]))
        target = E - 1 if el2n_epoch is None else el2n_epoch % E
        upto = [k for k, e in enumerate(obs) if e <= target]
        if upto:
            onehot = np.eye(C)[yi]
            out["el2n"][i] = np.linalg.norm(P[upto[-1]] - onehot)
        others = np.delete(zi, yi, axis=1)
        margins = zi[:, yi] - (others.max(1) if C > 1 else -np.inf)
        out["aum"][i] = -margins.mean()
        out["loss_mean"][i] = -logP[:, yi].mean()
        if T >= 2:
            d = np.array([np.abs(P[t] * (logP[t] - logP[t - 1])).sum() for t in range(1, T)])
            J = min(window, T)
            total = 0.0
            for k in range(T - J + 1):
                seg = d[k : k + J - 1]
                total += decay * (1 - decay) ** (T - J - k) * np.sqrt(((seg - seg.mean()) ** 2).sum())
            out["tdds"][i] = total
            py = P[:, yi]
            out["dyn_unc"][i] = np.mean([py[k : k + J].std() for k in range(T - J + 1)])
            # DUAL (Cho et al. 2025): per window, sample std (ddof 1) times (1 - mean) of p_y.
            out["dual"][i] = np.mean([py[k : k + J].std(ddof=1) * (1 - py[k : k + J].mean())
                                      for k in range(T - J + 1)])
        out["random"][i] = u[i]
    return out
