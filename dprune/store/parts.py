"""Recording a full store's epoch in parts: every rank writes, nothing is gathered to one process.

Legend: N samples, C classes, W ranks, B a batch, R rows of a merge block, M observations.

For a store on a filesystem that every rank sees.  During the epoch, each rank appends its own
observations to two files of its own in the store's directory (a :class:`RankLog`)::

    .epoch_0003.<session>.rank00002.obs.tmp      int64 [M, 2]: (step, sample index) per observation
    .epoch_0003.<session>.rank00002.logits.tmp   float32 [M, C]: the observation (lossless for
                                                 fp32, fp16 and bf16 models)

``step`` counts the rank's ``record`` calls, which every rank makes for every batch, so a step
names the same batch on every rank.  At the end of the epoch (:func:`merge_part`), rank r folds
the observations of its own share of the samples, rows [r N / W, (r + 1) N / W), from every
rank's log into the open epoch's temporary files (``pwrite`` of disjoint row ranges, then
fsync), in the order a gather to one writer would have applied them: step by step, and within
a step rank 0's rows first, each rank's in batch order.  Since the running mean of a sample
depends only on its own observations in that order (:func:`~.full.merge_batch`), the epoch is
bit-identical to one written by a single process from the gathered batches.  The writer of the
store then makes the epoch durable and marks it complete as usual, and every rank deletes its
log; a killed run leaves only ``.*.tmp`` files, which the next writer deletes (see
:mod:`dprune.locking`).

Memory per rank: the (step, index) pairs of the epoch (16 bytes per observation, all ranks) and
one block of R rows of logits; disk: each rank's observations once, as float32.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .identity import check_npy
from .full import check_batch, epoch_temp_files, merge_batch

# Bytes of float32 observations read per block of rows, and observations per merge call.
_MERGE_BYTES = 16 << 20
_SLICE = 256


def log_paths(run_dir, epoch: int, session: str, rank: int) -> tuple[Path, Path]:
    stem = Path(run_dir) / f".epoch_{epoch:04d}.{session}.rank{rank:05d}"
    return stem.with_name(stem.name + ".obs.tmp"), stem.with_name(stem.name + ".logits.tmp")


class RankLog:
    """One rank's observations of one epoch, appended in ``record`` order (see the module docstring)."""

    def __init__(self, run_dir, epoch: int, session: str, rank: int, n_samples: int, n_classes: int):
        self.paths = log_paths(run_dir, epoch, session, rank)
        self.n_samples, self.n_classes = n_samples, n_classes
        self._files = [open(p, "wb") for p in self.paths]
        self._step = 0

    def write(self, indices_B, logits_BC) -> None:
        """Append one step's batch (numpy or CPU tensors); an empty batch still counts as a step."""
        idx, z = check_batch(indices_B, logits_BC, self.n_samples, self.n_classes)
        obs = np.empty((len(idx), 2), np.int64)
        obs[:, 0], obs[:, 1] = self._step, idx
        self._files[0].write(obs.tobytes())
        self._files[1].write(np.ascontiguousarray(z, np.float32).tobytes())
        self._step += 1

    def close(self) -> None:
        """Flush and close (what another rank's reader needs; the logs themselves need no fsync)."""
        for f in self._files:
            f.close()

    def remove(self) -> None:
        self.close()
        for p in self.paths:
            p.unlink(missing_ok=True)


def merge_part(run_dir, epoch: int, session: str, world_size: int, rank: int, n_samples: int, n_classes: int,
               dtype) -> int:
    """Fold rank ``rank``'s share of the samples from every rank's log into the open epoch's files.

    Returns the number of values saturated to the fp16 range.  Reads the logs of all
    ``world_size`` ranks (closed by their writers); writes rows [rank N / W, (rank + 1) N / W)
    of the temporary epoch files and fsyncs them.
    """
    N, C, dtype = n_samples, n_classes, np.dtype(dtype)
    lo, hi = rank * N // world_size, (rank + 1) * N // world_size
    # Every observation of a row in [lo, hi): (step, rank, position in that rank's log, index).
    parts, logits = [], []
    for r in range(world_size):
        obs_path, logits_path = log_paths(run_dir, epoch, session, r)
        obs = np.fromfile(obs_path, np.int64).reshape(-1, 2)
        pos = np.flatnonzero((obs[:, 1] >= lo) & (obs[:, 1] < hi))
        parts.append(np.stack([obs[pos, 0], np.full(len(pos), r), pos, obs[pos, 1]], 1))
        logits.append(np.memmap(logits_path, np.float32, "r", shape=(len(obs), C)) if len(obs) else None)
    o = np.concatenate(parts) if parts else np.empty((0, 4), np.int64)
    rows = max(1, _MERGE_BYTES // (4 * C))
    # Blocks of rows, and inside each the order a gather would have applied: step, rank, position.
    o = o[np.lexsort((o[:, 2], o[:, 1], o[:, 0], (o[:, 3] - lo) // rows))]
    block_of = (o[:, 3] - lo) // rows
    bounds = np.searchsorted(block_of, np.arange(0, (hi - lo + rows - 1) // rows + 1))
    logits_tmp, counts_tmp = epoch_temp_files(run_dir, epoch)
    z_off = check_npy(logits_tmp, (N, C), dtype, f"epoch {epoch} is open")
    c_off = check_npy(counts_tmp, (N,), np.dtype(np.int32), f"epoch {epoch} is open")
    saturated = 0
    fds = [os.open(logits_tmp, os.O_WRONLY), os.open(counts_tmp, os.O_WRONLY)]
    try:
        for blk, a in enumerate(range(lo, hi, rows)):
            b = min(a + rows, hi)
            ob = o[bounds[blk]:bounds[blk + 1]]
            z = np.empty((len(ob), C), np.float32)
            for r in range(world_size):
                mine = np.flatnonzero(ob[:, 1] == r)
                if len(mine):
                    z[mine] = logits[r][ob[mine, 2]]
            m = np.zeros((b - a, C), dtype)
            c = np.zeros(b - a, np.int32)
            local = ob[:, 3] - a
            # Samples observed once need no order: slices of any of them (small, so that the
            # merge's temporaries stay in cache).  The others, step by step.
            seen = np.bincount(local, minlength=b - a)
            once = np.flatnonzero(seen[local] == 1)
            for k in range(0, len(once), _SLICE):
                g = once[k:k + _SLICE]
                saturated += merge_batch(m, c, local[g], z[g])
            rest = np.flatnonzero(seen[local] > 1)
            if len(rest):
                steps = ob[rest, 0]
                cuts = np.flatnonzero(np.r_[True, steps[1:] != steps[:-1], True])
                for s0, s1 in zip(cuts[:-1], cuts[1:]):
                    g = rest[s0:s1]
                    saturated += merge_batch(m, c, local[g], z[g])
            _pwrite_all(fds[0], m, z_off + a * C * dtype.itemsize)
            _pwrite_all(fds[1], c, c_off + a * 4)
        for fd in fds:
            os.fsync(fd)
    finally:
        for fd in fds:
            os.close(fd)
    return saturated


def _pwrite_all(fd: int, array: np.ndarray, offset: int) -> None:
    view = memoryview(np.ascontiguousarray(array)).cast("B")
    while len(view):
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done
