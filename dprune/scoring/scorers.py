"""Importance scorers and flags, as pure functions of :class:`TrajectoryStats`.

Convention for every scorer: a float tensor [N], **higher = more important = kept first**;
NaN for a sample that was never observed, whose logits were not finite, or that has too few
observed epochs for the scorer (those are reported, never silently pruned).  Where a paper
defines "hard = low score" the sign is flipped and the docstring says so.

Temporal scorers (``forgetting``, ``tdds``, ``dyn_unc``) walk each sample's *observed* epochs
in order, skipping epochs where the sample was not seen (P x K sampling, subsets).

Keyword parameters arrive checked against their ranges in :mod:`.params` (by
:func:`~dprune.scoring.params.merge_params` at the public entry points); the scorers do not
check them again.
"""
from __future__ import annotations

import numpy as np
import torch

from .stats import TrajectoryStats


def _invalid(s: TrajectoryStats) -> torch.Tensor:
    return (s.n_obs == 0) | s.nonfinite


def _masked(s: TrajectoryStats, x: torch.Tensor) -> torch.Tensor:
    return torch.where(_invalid(s), torch.full_like(x, float("nan")), x)


def _compact(values_EN: torch.Tensor, valid_EN: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-align each sample's valid values: ([N, E] values, [N] count), padding with NaN."""
    order = torch.argsort((~valid_EN).to(torch.int8), dim=0, stable=True)
    packed = values_EN.gather(0, order).T.contiguous()
    n = valid_EN.sum(0)
    pad = torch.arange(values_EN.shape[0], device=values_EN.device)[None, :] >= n[:, None]
    return packed.masked_fill(pad, float("nan")), n


def entropy(s: TrajectoryStats) -> torch.Tensor:
    """The paper's score: H(p) with p = softmax((1/|O|) sum_{e in O} z_e), natural log.

    O = observed epochs of the sample.  Source: "Data Pruning Can Do More" (arXiv
    2412.10091), soft labels averaged over an early logit trajectory.  High entropy =
    hard = kept.
    """
    return _masked(s, s.entropy)


def entropy_prob(s: TrajectoryStats) -> torch.Tensor:
    """H((1/|O|) sum_{e in O} softmax(z_e)): the variant that averages probabilities."""
    return _masked(s, s.entropy_prob)


def forgetting(s: TrajectoryStats) -> torch.Tensor:
    """Forgetting events (Toneva et al., ICLR 2019): correct -> incorrect transitions.

    Counted between consecutive observed epochs (correct = argmax z_e == label).  A sample
    never classified correctly gets E, the trajectory's number of epochs, which exceeds any
    achievable count (at most E / 2); Toneva et al. treat those as infinitely forgotten.
    More forgotten = more important (no sign flip).
    """
    E = s.correct.shape[0]
    packed, _ = _compact(s.correct, ~torch.isnan(s.correct))
    prev, cur = packed[:, :-1], packed[:, 1:]
    events = ((prev == 1) & (cur == 0)).sum(1).float()
    never = (torch.nan_to_num(packed, nan=0.0).sum(1) == 0)
    return _masked(s, torch.where(never, torch.full_like(events, float(E)), events))


def el2n(s: TrajectoryStats, *, epoch: int | None = None) -> torch.Tensor:
    """EL2N (Paul et al., NeurIPS 2021): ||softmax(z_e) - onehot(y)||_2 at one epoch.

    ``epoch`` (default: the trajectory's last epoch) is the epoch to read; a sample not observed
    then uses its latest observed epoch before it, and gets NaN if there is none.  Paul et al.
    average over several early-trained models; from one trajectory this is one model's EL2N.
    Higher = harder = kept (no sign flip).
    """
    E = s.el2n.shape[0]
    if epoch is None:
        epoch = E - 1
    if not -E <= epoch < E:
        raise ValueError(f"el2n epoch {epoch} is outside the trajectory's {E} epochs")
    upto = s.el2n[: (epoch % E) + 1]
    valid = ~torch.isnan(upto)
    last = torch.where(valid, torch.arange(upto.shape[0], device=upto.device)[:, None], -1).max(0).values
    val = upto.gather(0, last.clamp(min=0)[None])[0]
    return _masked(s, torch.where(last >= 0, val, torch.full_like(val, float("nan"))))


def aum(s: TrajectoryStats) -> torch.Tensor:
    """Area under the margin (Pleiss et al., NeurIPS 2020), **sign flipped**.

    AUM = mean over observed epochs of z_e[y] - max_{k != y} z_e[k].  Low AUM marks hard or
    mislabelled samples, so the score is -AUM (higher = more important).
    """
    return _masked(s, -torch.nanmean(s.logit_margin, dim=0))


def loss_mean(s: TrajectoryStats) -> torch.Tensor:
    """Mean cross-entropy over observed epochs, -(1/|O|) sum_e log softmax(z_e)[y].

    The moving-average loss used as a difficulty score; higher loss = kept.
    """
    return _masked(s, -torch.nanmean(s.logp_label, dim=0))


def tdds(s: TrajectoryStats, *, window: int = 10, decay: float = 0.9) -> torch.Tensor:
    """Temporal Dual-Depth Scoring (Zhang et al., CVPR 2024), as in the authors' code.

    With d_t = sum_c |p_t,c (log p_t,c - log p_{t-1},c)| between consecutive observed epochs
    (T observed epochs give T - 1 values) and J = min(window, T): for each window
    k = 0..T-J over d_{k+1..k+J-1}, the spread ||d - mean(d)||_2; the score is
    sum_k decay * (1 - decay)^(T-J-k) * spread_k (later windows weigh more).  The authors
    add 1e-8 inside the logs; this uses exact log-softmax.  Higher = kept.  NaN with fewer
    than 2 observed epochs.
    """
    d, n_d = _compact(s.tdds_div, ~torch.isnan(s.tdds_div))
    out = torch.full(n_d.shape, float("nan"), device=d.device)
    for m in torch.unique(n_d).tolist():
        if m < 1:
            continue
        rows = torch.nonzero(n_d == m)[:, 0]
        dm = d[rows, :m]
        T = m + 1
        J = min(window, T)
        total = torch.zeros(len(rows), device=d.device)
        for k in range(T - J + 1):
            seg = dm[:, k : k + J - 1]
            spread = (seg - seg.mean(1, keepdim=True)).pow(2).sum(1).sqrt()
            total += decay * (1 - decay) ** (T - J - k) * spread
        out[rows] = total
    return _masked(s, out)


def _label_prob_windows(s: TrajectoryStats, window: int, per_window) -> torch.Tensor:
    """Mean over the sliding windows of ``per_window(p [rows, K windows, J])`` of each sample's
    label probabilities over its T observed epochs, J = min(window, T); NaN with T < 2."""
    p, n = _compact(s.logp_label.exp(), ~torch.isnan(s.logp_label))
    out = torch.full(n.shape, float("nan"), device=p.device)
    for T in torch.unique(n).tolist():
        if T < 2:
            continue
        rows = torch.nonzero(n == T)[:, 0]
        win = p[rows, :T].unfold(1, min(window, T), 1)  # [rows, T - J + 1, J]
        out[rows] = per_window(win).mean(1)
    return _masked(s, out)


def dyn_unc(s: TrajectoryStats, *, window: int = 10) -> torch.Tensor:
    """Dynamic uncertainty (He et al., 2023): mean over sliding windows of std(p_e[y]).

    Over the T observed epochs with J = min(window, T): (1/(T-J+1)) sum_k std(p_k..p_{k+J-1}),
    population std.  Fluctuating label probability = uncertain = kept.  NaN with fewer than 2
    observed epochs.
    """
    return _label_prob_windows(s, window, lambda w: w.std(-1, unbiased=False))


def dual(s: TrajectoryStats, *, window: int = 10) -> torch.Tensor:
    """DUAL (Cho et al., 2025): difficulty times uncertainty of the label probability.

    Over the T observed epochs with J = min(window, T): for each window k = 0..T-J of the
    label probabilities p_k..p_{k+J-1}, std * (1 - mean) (std with Bessel's correction, as
    in the authors' code, which also multiplies by a constant 10 that does not change the
    ranking); the score is the mean over windows.  High = uncertain and not yet learned =
    kept.  The authors score the first 30 of 200 epochs with J = 10.  NaN with fewer than 2
    observed epochs.
    """
    return _label_prob_windows(s, window, lambda w: w.std(-1, unbiased=True) * (1 - w.mean(-1)))


def random(s: TrajectoryStats, *, seed: int = 0, offset: int = 0, n_total: int | None = None) -> torch.Tensor:
    """Uniform [0, 1) scores from ``numpy.random.default_rng(seed)``, the random-pruning baseline.

    Drawn for all ``n_total`` samples at once and sliced at ``offset``, so a chunked pass gives
    the same scores as a whole one.
    """
    n = s.n_obs.shape[0]
    n_total = n if n_total is None else n_total
    u = np.random.default_rng(seed).random(n_total)[offset : offset + n]
    return _masked(s, torch.as_tensor(u, dtype=torch.float32, device=s.n_obs.device))


SCORERS = {
    "entropy": entropy,
    "entropy_prob": entropy_prob,
    "forgetting": forgetting,
    "el2n": el2n,
    "aum": aum,
    "tdds": tdds,
    "dyn_unc": dyn_unc,
    "loss_mean": loss_mean,
    "dual": dual,
    "random": random,
}

# The scorers that read only per-epoch statistics: the "epoch_scores" kernel of the table in
# :mod:`.backends` (numba: :mod:`dprune.kernels.epoch_scores_cpu`; reference: :func:`epoch_scores`).
EPOCH_SCORERS = ("forgetting", "el2n", "aum", "loss_mean", "tdds", "dyn_unc", "dual")


def epoch_scores(logp_label_EN, correct_EN, margin_EN, el2n_EN, tdds_EN, invalid_N, *, methods, el2n_epoch=None,
                 tdds_window=10, tdds_decay=0.9, dyn_unc_window=10, dual_window=10) -> dict[str, np.ndarray]:
    """The reference of the per-epoch scorers kernel, with its signature: float32 [N] numpy scores
    of ``methods`` (names in :data:`EPOCH_SCORERS`) from the per-epoch fields of
    :class:`TrajectoryStats` ([E, N] tensors or arrays, on any device) and ``invalid_N`` (bool
    [N]: unobserved or non-finite samples, NaN scores)."""
    fields = [torch.as_tensor(a) for a in (logp_label_EN, correct_EN, margin_EN, el2n_EN, tdds_EN)]
    invalid = torch.as_tensor(invalid_N, device=fields[0].device)
    st = TrajectoryStats(n_obs=(~invalid).long(), nonfinite=torch.zeros_like(invalid), entropy=None,
                         entropy_prob=None, p_max=None, p_second=None, soft_argmax=None, p_label=None,
                         logp_label=fields[0], correct=fields[1], logit_margin=fields[2], el2n=fields[3],
                         tdds_div=fields[4], p_avg=None)
    kw = {"el2n": {"epoch": el2n_epoch}, "tdds": {"window": tdds_window, "decay": tdds_decay},
          "dyn_unc": {"window": dyn_unc_window}, "dual": {"window": dual_window}}
    return {m: SCORERS[m](st, **kw.get(m, {})).cpu().numpy().astype(np.float32) for m in methods}


# Scorers over sliding windows of epochs: with fewer observed epochs than the window they
# compute one window of all the epochs there are, a different statistic from the paper's.
WINDOWED = {"tdds": "window", "dyn_unc": "window", "dual": "window"}


def clipped_windows(methods, params: dict, n_epochs: int) -> dict[str, str]:
    """``{scorer: explanation}`` for the windowed scorers a trajectory of ``n_epochs`` is too short for."""
    out = {}
    for m in methods:
        if m in WINDOWED:
            w = params[m][WINDOWED[m]]
            if n_epochs < w:
                out[m] = f"window of {w} epochs clipped to the {n_epochs} epochs recorded (one window)"
    return out
