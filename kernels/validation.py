"""Input checks shared by the fused kernels' launchers (Triton and numba)."""
from __future__ import annotations

import torch


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
