"""Per-sample trajectory statistics: the one pass every scorer and flag is computed from.

Legend: E epochs, N samples (a chunk of them), C classes.

Inputs ``logits_ENC`` (any float dtype), ``counts_EN`` (0 = sample not observed in that
epoch) and ``labels_N``.  :func:`compute_stats` is the plain torch **reference** of the fused
kernel in ``dprune.kernels``: the kernel must return the same :class:`TrajectoryStats`.

Memory traffic of this reference, for B = bytes per logit: it reads the trajectory once
(E*N*C*B) but materialises fp32 copies, log-softmax and probabilities (~4 * E*N*C*4 bytes of
temporaries), so it is bound by allocation, not by the read; the fused kernel keeps those in
registers.  Per-epoch outputs are E*N*4 bytes each, a factor C smaller than the input.
"""
from __future__ import annotations

import torch

from dprune.kernels.common import FusedStats

# One record of the statistics for the reference and the kernels alike: the kernels (leaves)
# define it, with every field documented; scoring calls it TrajectoryStats.
TrajectoryStats = FusedStats

PER_EPOCH_FIELDS = ("logp_label", "correct", "logit_margin", "el2n", "tdds_div")


def _entropy_from_logp(logp: torch.Tensor) -> torch.Tensor:
    # p * log p with p = 0 contributes 0 (not NaN from 0 * -inf).
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


def compute_stats(logits_ENC: torch.Tensor, counts_EN: torch.Tensor, labels_N: torch.Tensor, *,
                  with_p_avg: bool = True, with_p_soft: bool = True) -> TrajectoryStats:
    """Reference statistics of a trajectory chunk (see :class:`TrajectoryStats`).

    Computed in float32 whatever the input dtype.  Inputs are assumed already validated
    (shapes [E, N, C], [E, N], [N]; labels in [0, C)); :func:`dprune.scoring.score_arrays`
    is the validating public entry point.
    """
    E, N, C = logits_ENC.shape
    dev = logits_ENC.device
    z = logits_ENC.float()
    obs_EN = counts_EN > 0
    n_obs = obs_EN.sum(0)
    y = labels_N.long()
    nonfinite = (~torch.isfinite(z).all(-1) & obs_EN).any(0)

    # Unobserved rows hold zeros or stale values: mask them out of every reduction.
    z_obs = torch.where(obs_EN[..., None], z, torch.zeros((), device=dev))
    denom = n_obs.clamp(min=1).float()
    z_mean = z_obs.sum(0) / denom[:, None]
    logp_mean = torch.log_softmax(z_mean, -1)
    entropy = _entropy_from_logp(logp_mean)
    p_mean = logp_mean.exp()
    if C >= 2:
        top2 = p_mean.topk(2, dim=-1)
        p_max, p_second = top2.values[:, 0], top2.values[:, 1]
        soft_argmax = top2.indices[:, 0]
    else:
        p_max = p_mean[:, 0]
        p_second = torch.zeros_like(p_max)
        soft_argmax = torch.zeros(N, dtype=torch.long, device=dev)
    p_label = p_mean.gather(1, y[:, None])[:, 0]

    logp_ENC = torch.log_softmax(z, -1)
    p_ENC = logp_ENC.exp()
    p_avg = torch.where(obs_EN[..., None], p_ENC, torch.zeros((), device=dev)).sum(0) / denom[:, None]
    entropy_prob = -torch.where(p_avg > 0, p_avg * p_avg.log(), torch.zeros((), device=dev)).sum(-1)

    y_EN1 = y[None, :, None].expand(E, N, 1)
    logp_label = logp_ENC.gather(2, y_EN1)[..., 0]
    z_label = z.gather(2, y_EN1)[..., 0]
    correct = (z.argmax(-1) == y[None]).float()
    z_others = z.scatter(2, y_EN1, float("-inf"))
    logit_margin = z_label - z_others.max(-1).values
    # ||p - onehot(y)||^2 = sum_{k != y} p_k^2 + (sum_{k != y} p_k)^2, written without 1 - p_y,
    # which cancels catastrophically in fp32 for confident samples.
    p_others = p_ENC.scatter(2, y_EN1, 0.0)
    el2n = ((p_others * p_others).sum(-1) + p_others.sum(-1).pow(2)).sqrt()

    tdds_div = torch.full((E, N), float("nan"), device=dev)
    prev_logp = torch.zeros(N, C, device=dev)
    has_prev = torch.zeros(N, dtype=torch.bool, device=dev)
    for e in range(E):
        div = (p_ENC[e] * (logp_ENC[e] - prev_logp)).abs().sum(-1)
        tdds_div[e] = torch.where(has_prev & obs_EN[e], div, tdds_div[e])
        prev_logp = torch.where(obs_EN[e][:, None], logp_ENC[e], prev_logp)
        has_prev |= obs_EN[e]

    nan = torch.tensor(float("nan"), device=dev)
    observed = n_obs > 0

    def per_sample(x):
        return torch.where(observed, x, nan)

    def per_epoch(x):
        return torch.where(obs_EN, x, nan)

    return TrajectoryStats(
        n_obs=n_obs.long(),
        nonfinite=nonfinite,
        entropy=per_sample(entropy),
        entropy_prob=per_sample(entropy_prob),
        p_max=per_sample(p_max),
        p_second=per_sample(p_second),
        soft_argmax=torch.where(observed, soft_argmax, torch.full_like(soft_argmax, -1)),
        p_label=per_sample(p_label),
        logp_label=per_epoch(logp_label),
        correct=per_epoch(correct),
        logit_margin=per_epoch(logit_margin),
        el2n=per_epoch(el2n),
        tdds_div=tdds_div,
        p_avg=torch.where(observed[:, None], p_avg, nan) if with_p_avg else None,
        p_soft=torch.where(observed[:, None], p_mean, nan) if with_p_soft else None,
    )
