"""What both fused kernels share: their result type and their input checks (torch only)."""
from __future__ import annotations

from typing import NamedTuple

import torch


class FusedStats(NamedTuple):
    """Everything the scorers need, per sample; per-epoch entries are NaN where unobserved.

    (``dprune.scoring`` calls this record ``TrajectoryStats``; its torch reference is
    ``dprune.scoring.stats.compute_stats``, which the kernels must match.)

    Per sample [N]: ``n_obs`` (int64, observed epochs), ``nonfinite`` (bool, an observed logit
    is NaN or +-Inf), and from the soft label p = softmax(mean over observed epochs of z_e):
    ``entropy`` (nats), ``p_max``, ``p_second`` (0 when C = 1), ``soft_argmax`` (int64, -1 if
    unobserved), ``p_label``; ``entropy_prob`` = H(mean over observed epochs of softmax(z_e)).

    Per epoch [E, N] (float32): ``logp_label`` = log softmax(z_e)[y]; ``correct`` (1.0 when
    argmax z_e == y, else 0.0); ``logit_margin`` = z_e[y] - max_{k != y} z_e[k] (+Inf when C = 1);
    ``el2n`` = ||softmax(z_e) - onehot(y)||_2; ``tdds_div`` = sum_c |p_e,c (log p_e,c - log p_prev,c)|
    against the sample's previous *observed* epoch (NaN at its first observed epoch).

    ``p_avg`` [N, C] float32, when asked for: the mean over observed epochs of softmax(z_e)
    (NaN rows for unobserved samples); else None.  ``p_soft`` [N, C] float32, when asked for:
    the soft label softmax(mean over observed epochs of z_e) itself (NaN rows for unobserved
    samples); else None.  Confident learning reads one of the two (its ``probs`` parameter).
    """

    n_obs: torch.Tensor
    nonfinite: torch.Tensor
    entropy: torch.Tensor
    entropy_prob: torch.Tensor
    p_max: torch.Tensor
    p_second: torch.Tensor
    soft_argmax: torch.Tensor
    p_label: torch.Tensor
    logp_label: torch.Tensor
    correct: torch.Tensor
    logit_margin: torch.Tensor
    el2n: torch.Tensor
    tdds_div: torch.Tensor
    p_avg: torch.Tensor | None = None
    p_soft: torch.Tensor | None = None


def check_stats_inputs(logits_ENC: torch.Tensor, counts_EN: torch.Tensor, labels_N: torch.Tensor) -> tuple[int, int, int]:
    """Raise ``ValueError`` naming the shapes/dtypes unless the inputs fit; return (E, N, C)."""
    if logits_ENC.ndim != 3:
        raise ValueError(f"logits must be [E, N, C], got shape {tuple(logits_ENC.shape)}")
    E, N, C = logits_ENC.shape
    if tuple(counts_EN.shape) != (E, N) or tuple(labels_N.shape) != (N,):
        raise ValueError(
            f"expected counts [E, N] = [{E}, {N}] and labels [N] = [{N}], "
            f"got {tuple(counts_EN.shape)} and {tuple(labels_N.shape)}"
        )
    if logits_ENC.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"logits must be float16, bfloat16 or float32, got {logits_ENC.dtype}")
    if counts_EN.is_floating_point() or labels_N.is_floating_point():
        raise ValueError(f"counts and labels must be integers, got {counts_EN.dtype} and {labels_N.dtype}")
    return E, N, C
