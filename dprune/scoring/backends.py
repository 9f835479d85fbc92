"""Which implementation computes :class:`~dprune.scoring.stats.TrajectoryStats` for a chunk.

``numba``: the fused CPU kernel :func:`dprune.kernels.fused_stats_cpu.fused_stats_cpu`, one
read of the logits per chunk, threads over samples; runs on the CPU.
``triton``: the fused kernel :func:`dprune.kernels.fused_stats.fused_stats`; runs on a CUDA GPU,
or on the CPU in Triton's (slow) interpreter when ``TRITON_INTERPRET=1`` was set in the
environment before ``dprune.kernels`` was first imported.
``torch``: the reference :func:`dprune.scoring.stats.compute_stats`, plain vectorised torch on
whatever device the chunk is on (the CPU here); the readable definition, slow.
``auto``: ``triton`` when a CUDA GPU is available, else ``numba``.

No silent fallback: asking for a backend that cannot run raises ``ValueError``.  The kernels
are imported only when their backend is resolved, so importing :mod:`dprune` neither loads
numba nor decorates the Triton kernels before a test or a user has set ``TRITON_INTERPRET``.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch

from .stats import TrajectoryStats, compute_stats

BACKENDS = ("auto", "torch", "triton", "numba")

StatsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], TrajectoryStats]


def resolve_backend(backend: str = "auto") -> tuple[str, StatsFn]:
    """Return ``(name of the backend that will run, its stats function)``.

    Raises ``ValueError`` for an unknown name, or for ``triton`` without a CUDA GPU and
    without Triton's interpreter.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "triton" if torch.cuda.is_available() else "numba"
    if backend == "torch":
        return "torch", compute_stats
    if backend == "numba":
        from dprune.kernels.fused_stats_cpu import fused_stats_cpu

        return "numba", fused_stats_cpu
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            "backend 'triton' needs a CUDA GPU; on a CPU, set TRITON_INTERPRET=1 in the environment "
            "before importing dprune.kernels to run Triton's interpreter (slow), or use backend 'numba'"
        )
    from dprune.kernels.fused_stats import fused_stats, interpreter_active

    if not torch.cuda.is_available() and not interpreter_active():
        raise ValueError(
            "backend 'triton' on a CPU: dprune.kernels was imported before TRITON_INTERPRET=1 was set, "
            "so its kernels were compiled for a GPU; set the variable before the first import"
        )
    return "triton", fused_stats


def epochs_stats(name: str, stats_fn: StatsFn) -> Callable[..., TrajectoryStats]:
    """``stats(epochs_nC, counts_EN, labels_N, **kw)`` over E separate epoch arrays, on the CPU.

    ``numba`` reads the arrays in place (:func:`dprune.kernels.fused_stats_cpu.fused_stats_epochs`);
    any other backend gets them stacked into one [E, n, C] tensor.
    """
    if name == "numba":
        from dprune.kernels.fused_stats_cpu import fused_stats_epochs

        return fused_stats_epochs

    def stacked(epochs_nC, counts_EN, labels_N, **kw):
        return stats_fn(torch.from_numpy(np.stack(epochs_nC)), torch.from_numpy(counts_EN),
                        torch.from_numpy(labels_N), **kw)

    return stacked


def backend_device(name: str) -> torch.device:
    """Device a resolved backend computes on: the GPU for ``triton`` when there is one, else the CPU."""
    if name == "triton" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
