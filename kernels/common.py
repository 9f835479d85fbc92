"""What both fused kernels share: their result type and their input checks (torch only)."""
from __future__ import annotations

from typing import NamedTuple

import torch


class FusedStats(NamedTuple):
    """Per-sample trajectory statistics as the fused kernels return them (plain tensors).

    The fields, dtypes and NaN placement are those of the torch reference,
    ``dprune.scoring.stats.compute_stats``, which documents each one; ``dprune.scoring``
    turns this tuple into its own ``TrajectoryStats``.  Per sample [N]: ``n_obs`` (int64),
    ``nonfinite`` (bool), ``entropy``, ``entropy_prob``, ``p_max``, ``p_second``,
    ``soft_argmax`` (int64), ``p_label``; per epoch [E, N], float32: ``logp_label``,
    ``correct``, ``logit_margin``, ``el2n``, ``tdds_div``; and, when asked for, ``p_avg`` [N, C]
    float32, the mean over observed epochs of the probabilities (NaN rows for unobserved
    samples), else None.
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
