"""Which implementation computes :class:`~dprune.scoring.stats.TrajectoryStats` for a chunk.

``torch``: the vectorised reference in :mod:`dprune.scoring.stats` (CPU or GPU).
No silent fallback: asking for a backend that cannot run raises ``ValueError``.
"""
from __future__ import annotations

from typing import Callable

import torch

from .stats import TrajectoryStats, compute_stats

BACKENDS = ("auto", "torch")

StatsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], TrajectoryStats]


def resolve_backend(backend: str = "auto") -> tuple[str, StatsFn]:
    """Return ``(name of the backend that will run, its stats function)``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    return "torch", compute_stats
