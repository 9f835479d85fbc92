"""Scoring statistics accumulated epoch by epoch: the summary store's folding rule, and reading it back.

Legend: N samples, C classes, E epochs, n a chunk of samples, F per-epoch fields.

:class:`SummaryFold` is what a :class:`~dprune.store.SummaryStore` is created with: the state
it keeps and how one epoch's mean logits are folded into it.  The state holds exactly what
:func:`~dprune.scoring.stats.compute_stats` needs of the past epochs:

    z_sum      fp32  [N, C]  sum over observed epochs of the epoch-mean logits
    p_sum      fp32  [N, C]  sum over observed epochs of their softmax
    prev       dtype [N, C]  mean logits of each sample's last observed epoch (TDDS)
    n_obs      int64 [N]     observed epochs
    nonfinite  bool  [N]     an observed logit was NaN or +-Inf

and per epoch the F = 5 per-epoch fields of :class:`~dprune.scoring.stats.TrajectoryStats`.
:func:`summary_stats` turns a summary store back into the ``TrajectoryStats`` the reference
gives on the full trajectory of the same epochs.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .backends import resolve_backend
from .stats import PER_EPOCH_FIELDS, TrajectoryStats
from .streams import chunk_ranges

_TORCH = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}


class SummaryFold:
    """The folding rule of a summary store (see the module docstring)."""

    per_epoch_fields = PER_EPOCH_FIELDS

    def state_spec(self, n_samples: int, n_classes: int, dtype) -> dict[str, tuple[tuple, np.dtype]]:
        N, C = n_samples, n_classes
        return {"z_sum": ((N, C), np.dtype(np.float32)), "p_sum": ((N, C), np.dtype(np.float32)),
                "prev": ((N, C), np.dtype(dtype)), "n_obs": ((N,), np.dtype(np.int64)),
                "nonfinite": ((N,), np.dtype(np.bool_))}

    def fold(self, state: dict, mean_nC: torch.Tensor, observed_n: torch.Tensor, labels_n: torch.Tensor):
        """One epoch into one chunk of the state: ``(new state, float32 [F, n] statistics)``."""
        prev = torch.from_numpy(state["prev"]).float()
        n_obs = torch.from_numpy(state["n_obs"])
        # The epoch's statistics are those of epoch 1 of the two-epoch trajectory
        # [previous observed epoch, this epoch]: the reference's formulas, TDDS included.
        pair = _cpu_stats()(torch.stack([prev, mean_nC]), torch.stack([n_obs > 0, observed_n]).to(torch.int32),
                            labels_n, threads=1)
        stats_Fn = np.stack([getattr(pair, f)[1].numpy() for f in PER_EPOCH_FIELDS])
        obs = observed_n[:, None]
        p = torch.log_softmax(mean_nC, -1).exp()
        # A row sum is finite unless the row holds NaN or +-Inf (or overflows: checked exactly).
        suspect = observed_n & ~torch.isfinite(mean_nC.sum(-1))
        bad = torch.zeros_like(observed_n)
        bad[suspect] = ~torch.isfinite(mean_nC[suspect]).all(-1)
        new = {
            "z_sum": (torch.from_numpy(state["z_sum"]) + torch.where(obs, mean_nC, 0.0)).numpy(),
            "p_sum": (torch.from_numpy(state["p_sum"]) + torch.where(obs, p, 0.0)).numpy(),
            "prev": torch.where(obs, mean_nC, prev).to(_TORCH[state["prev"].dtype]).numpy(),
            "n_obs": (n_obs + observed_n).numpy(),
            "nonfinite": state["nonfinite"] | bad.numpy(),
        }
        return new, stats_Fn


def summary_stats(store, chunk_size: int, only=None) -> Iterator[tuple[int, int, TrajectoryStats]]:
    """Yield ``(start, stop, TrajectoryStats)`` of a summary store over all samples and completed epochs.

    The same statistics :func:`~dprune.scoring.stats.compute_stats` gives on the full
    trajectory of these epochs.  ``only``: see :func:`~dprune.scoring.streams.chunk_ranges`.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if tuple(store.per_epoch_fields) != PER_EPOCH_FIELDS:
        raise ValueError(f"{store.run_dir} was folded with fields {store.per_epoch_fields}, "
                         f"this version reads {PER_EPOCH_FIELDS}")
    E, N = store.epochs_completed, store.n_samples
    state = store.state()
    per_epoch = [store.epoch_stats(e) for e in range(E)]
    nan = torch.tensor(float("nan"))
    for a, b in chunk_ranges(N, chunk_size, only):
        n_obs = torch.from_numpy(np.array(state["n_obs"][a:b]))
        observed = n_obs > 0
        denom = n_obs.clamp(min=1).float()[:, None]
        z_mean = torch.from_numpy(np.array(state["z_sum"][a:b])) / denom
        # The soft label's statistics as the reference computes them from the mean logits:
        # those of a one-epoch trajectory holding the mean.
        soft = _cpu_stats()(z_mean[None], observed[None].to(torch.int32), torch.from_numpy(store.labels[a:b]),
                            with_p_soft=True)
        p_avg = torch.from_numpy(np.array(state["p_sum"][a:b])) / denom
        entropy_prob = -torch.where(p_avg > 0, p_avg * p_avg.log(), 0.0).sum(-1)
        fields = {f: torch.from_numpy(np.stack([s[i, a:b] for s in per_epoch]) if E else np.empty((0, b - a), np.float32))
                  for i, f in enumerate(PER_EPOCH_FIELDS)}
        yield a, b, TrajectoryStats(
            n_obs=n_obs,
            nonfinite=torch.from_numpy(np.array(state["nonfinite"][a:b])),
            entropy=soft.entropy,
            entropy_prob=torch.where(observed, entropy_prob, nan),
            p_max=soft.p_max,
            p_second=soft.p_second,
            soft_argmax=soft.soft_argmax,
            p_label=soft.p_label,
            **fields,
            p_avg=torch.where(observed[:, None], p_avg, nan),
            p_soft=soft.p_soft,
        )


def _cpu_stats():
    """The CPU statistics kernel (the ``numba`` backend), resolved on first use so that importing
    :mod:`dprune` does not load numba."""
    return resolve_backend("numba")[1]
