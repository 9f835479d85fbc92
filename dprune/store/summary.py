"""Summary store: running sums of a trajectory, in O(N*C) space whatever the number of epochs.

Legend: N samples, C classes, E epochs, B a batch of observations, n a chunk of samples,
F per-epoch fields.

Same writer API and run-directory identity as :class:`~.full.TrajectoryStore`, but instead
of every epoch's [N, C] logits it keeps a running **state** (arrays named by the fold, e.g.
sums of logits and of probabilities) and F statistics per sample per epoch::

    accum.sum.npy              fp32  [N, C]  sum of the open epoch's observations
    accum.counts.npy           int32 [N]     observations so far in the open epoch
    state_0003.{name}.npy      the state after 3 epochs (shapes and dtypes in meta.json)
    epoch_0002.stats.npy       fp32  [F, N]  that epoch's per-sample statistics
    epoch_0002.counts.npy      int32 [N]     that epoch's observations

The store only stores.  What the state holds and how an epoch is folded into it are the
scoring layer's (:mod:`dprune.scoring.online`): a writer passes a ``fold`` object with

* ``state_spec(n_samples, n_classes, dtype) -> {name: (shape, numpy dtype)}`` (recorded in
  ``meta.json`` at creation, so readers need no fold),
* ``per_epoch_fields``, the names of the F statistics,
* ``fold(state, mean_nC, observed_n, labels_n) -> (new_state, stats_Fn)``: one chunk of
  samples; ``state`` maps names to that chunk's arrays, ``mean_nC`` (float32, already
  rounded to the store dtype as the full store would store it) is the epoch's mean logits.

Completing epoch k folds the accumulator into ``state_{k+1}`` and the epoch's files (temporary
names, allocated up front, renamed when complete), then atomically marks the epoch complete
in ``meta.json``; ``state_{k-1}`` is deleted afterwards, ``state_k`` kept so that
:meth:`SummaryStore.rollback` can undo the last epoch.  A writer killed at any point leaves
the last complete state untouched, and the epoch is redone on resume.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..fileio import open_npy_for_writing, replace_durably, temp_name
from .base import RunDirStore
from .identity import StoreError, check_npy
from .means import merge_means, to_store_dtype

# fp32 bytes of the [n, C] working set of one fold chunk (each of the workers holds one).
_FOLD_BYTES = 16 << 20


class SummaryStore(RunDirStore):
    """Running statistics of a logit trajectory; see the module docstring.

    Create with :meth:`create` and reopen for writing with ``open(run_dir, "a")``, both with
    a ``fold`` (usually ``dprune.scoring.online.SummaryFold()``); ``open(run_dir)`` reads.
    """

    KIND = "summary"
    DATA_FILES = ("epoch_*.npy", "state_*.npy", "accum.*.npy")

    def __init__(self, run_dir, meta, labels_N, sample_ids, lock, fold=None):
        super().__init__(run_dir, meta, labels_N, sample_ids, lock)
        if lock is not None and fold is None:
            raise ValueError("writing a summary store needs a fold (dprune.scoring.online.SummaryFold())")
        self.fold = fold
        self._acc_NC: torch.Tensor | None = None
        self._acc_counts_N: torch.Tensor | None = None
        self._state_views: dict[str, np.ndarray] = {}
        self._stats_views: dict[int, np.ndarray] = {}
        self._count_views: dict[int, np.ndarray] = {}

    # ------------------------------------------------------------------ layout
    def _init_files(self) -> None:
        spec = self.fold.state_spec(self.n_samples, self.n_classes, self.dtype)
        self.meta["state"] = {k: {"shape": list(shape), "dtype": np.dtype(dt).name} for k, (shape, dt) in spec.items()}
        self.meta["per_epoch_fields"] = list(self.fold.per_epoch_fields)
        for key, (shape, dtype) in self._state_spec().items():
            path = self._state_file(0, key)
            mm = open_npy_for_writing(temp_name(path), dtype, shape)
            mm.flush()
            del mm
            replace_durably(temp_name(path), path)

    def _state_spec(self) -> dict[str, tuple[tuple, np.dtype]]:
        try:
            return {k: (tuple(v["shape"]), np.dtype(v["dtype"])) for k, v in self.meta["state"].items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            raise StoreError(f"{self.run_dir / 'meta.json'} is corrupt: bad 'state' layout") from None

    @property
    def per_epoch_fields(self) -> tuple[str, ...]:
        return tuple(self.meta.get("per_epoch_fields", ()))

    def _state_file(self, epochs: int, key: str) -> Path:
        return self.run_dir / f"state_{epochs:04d}.{key}.npy"

    def _stats_file(self, epoch: int) -> Path:
        return self.run_dir / f"epoch_{epoch:04d}.stats.npy"

    def _counts_file(self, epoch: int) -> Path:
        return self.run_dir / f"epoch_{epoch:04d}.counts.npy"

    def nbytes(self) -> int:
        """Bytes of statistics on disk: the current state and the completed epochs' files."""
        paths = [self._state_file(self.epochs_completed, k) for k in self._state_spec()]
        for e in range(self.epochs_completed):
            paths += [self._stats_file(e), self._counts_file(e)]
        return sum(p.stat().st_size for p in paths)

    def _check_files(self) -> None:
        E = self.epochs_completed
        what = f"{E} epochs are complete"
        for key, (shape, dtype) in self._state_spec().items():
            path = self._state_file(E, key)
            check_npy(path, shape, dtype, what)
            self._state_views[key] = np.load(path, mmap_mode="r", allow_pickle=False)
        for e in range(E):
            self._map_epoch(e)

    def _map_epoch(self, epoch: int) -> None:
        what = f"epoch {epoch} is marked complete"
        F = len(self.per_epoch_fields)
        check_npy(self._stats_file(epoch), (F, self.n_samples), np.dtype(np.float32), what)
        check_npy(self._counts_file(epoch), (self.n_samples,), np.dtype(np.int32), what)
        self._stats_views[epoch] = np.load(self._stats_file(epoch), mmap_mode="r", allow_pickle=False)
        self._count_views[epoch] = np.load(self._counts_file(epoch), mmap_mode="r", allow_pickle=False)

    # ------------------------------------------------------------------ writing
    def _begin(self, epoch: int) -> None:
        self._acc_NC = self._acc_counts_N = None  # allocated on the first write

    def write(self, epoch: int, indices_B, logits_BC) -> None:
        """Add a batch of observations: ``logits_BC[i]`` is one observation of sample ``indices_B[i]``.

        Indices may repeat, within the batch and across calls; the epoch's value for a sample
        is the mean of its observations.  Accepts numpy arrays or torch tensors.
        """
        self._require_open(epoch)
        idx = torch.as_tensor(indices_B).cpu()
        z = torch.as_tensor(logits_BC).cpu()
        if idx.ndim != 1 or z.ndim != 2 or tuple(z.shape) != (len(idx), self.n_classes):
            raise ValueError(
                f"expected indices [B] and logits [B, {self.n_classes}], got {tuple(idx.shape)} and {tuple(z.shape)}"
            )
        if idx.is_floating_point() or not z.is_floating_point():
            raise ValueError(f"expected integer indices and float logits, got {idx.dtype} and {z.dtype}")
        if len(idx) == 0:
            return
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.n_samples:
            raise ValueError(f"sample indices out of range [0, {self.n_samples}): min {lo}, max {hi}")
        if self._acc_NC is None:
            N, C = self.n_samples, self.n_classes
            # Fresh, allocated files read as zeros; mapped so an ImageNet-sized [N, C] stays on disk.
            acc = open_npy_for_writing(self.run_dir / "accum.sum.npy", np.float32, (N, C))
            cnt = open_npy_for_writing(self.run_dir / "accum.counts.npy", np.int32, (N,))
            self._acc_NC, self._acc_counts_N = torch.from_numpy(acc), torch.from_numpy(cnt)
        idx = idx.to(torch.int64)
        self._acc_NC.index_add_(0, idx, z.float())
        self._acc_counts_N.index_add_(0, idx, torch.ones(len(idx), dtype=torch.int32))

    def _finish(self, epoch: int) -> None:
        spec = self._state_spec()
        F = len(self.per_epoch_fields)
        maps = {
            "src": {k: np.load(self._state_file(epoch, k), mmap_mode="r", allow_pickle=False) for k in spec},
            "dst": {k: open_npy_for_writing(temp_name(self._state_file(epoch + 1, k)), dt, shape)
                    for k, (shape, dt) in spec.items()},
            "stats": open_npy_for_writing(temp_name(self._stats_file(epoch)), np.float32, (F, self.n_samples)),
            "counts": open_npy_for_writing(temp_name(self._counts_file(epoch)), np.int32, (self.n_samples,)),
        }
        chunk = max(1, _FOLD_BYTES // (self.n_classes * 4 * 8))

        def fold(starts: list[int]) -> None:
            for a in starts:
                self._fold_rows(a, min(a + chunk, self.n_samples), maps["src"], maps["dst"], maps["stats"],
                                maps["counts"])

        run_split(fold, list(range(0, self.n_samples, chunk)), torch.get_num_threads())
        for arr in (*maps["dst"].values(), maps["stats"], maps["counts"]):
            arr.flush()
        maps.clear()  # unmap before the files are renamed
        for path in [self._state_file(epoch + 1, k) for k in spec] + [self._stats_file(epoch),
                                                                       self._counts_file(epoch)]:
            replace_durably(temp_name(path), path)
        self._acc_NC = self._acc_counts_N = None

    def _fold_rows(self, a: int, b: int, src: dict, dst: dict, stats: np.ndarray, counts: np.ndarray) -> None:
        """Fold the open epoch's rows [a, b) into the next state and the epoch's files."""
        if self._acc_NC is None:  # nothing was written this epoch
            sums, cnt = torch.zeros(b - a, self.n_classes), torch.zeros(b - a, dtype=torch.int32)
        else:
            sums, cnt = self._acc_NC[a:b], self._acc_counts_N[a:b]
        obs = cnt > 0
        # The epoch's mean as the full store would store it (the rule of .means).
        mean, _ = to_store_dtype(merge_means(0, 0, sums.numpy(), cnt.numpy()), self.dtype)
        mean = torch.from_numpy(mean.astype(np.float32))
        state = {k: np.array(v[a:b]) for k, v in src.items()}
        new_state, stats_Fn = self.fold.fold(state, mean, obs, torch.from_numpy(self.labels[a:b]))
        for k, v in new_state.items():
            dst[k][a:b] = v
        stats[:, a:b] = stats_Fn
        counts[a:b] = cnt.numpy()

    def _after_complete(self, epoch: int) -> None:
        for path in (self.run_dir / "accum.sum.npy", self.run_dir / "accum.counts.npy"):
            path.unlink(missing_ok=True)
        for k in self._state_spec():
            for old in range(epoch):  # keep the state before this epoch, for rollback
                self._state_file(old, k).unlink(missing_ok=True)
        self._state_views = {k: np.load(self._state_file(epoch + 1, k), mmap_mode="r", allow_pickle=False)
                             for k in self._state_spec()}
        self._map_epoch(epoch)

    def _can_roll_back(self, epochs_completed: int) -> None:
        k = self.epochs_completed
        if epochs_completed != k - 1 or not all(self._state_file(k - 1, key).exists() for key in self._state_spec()):
            raise StoreError(
                f"cannot roll back a summary store from {k} to {epochs_completed} epochs: only the "
                f"last completed epoch can be undone, and only once"
            )
        self._state_views = {key: np.load(self._state_file(k - 1, key), mmap_mode="r", allow_pickle=False)
                             for key in self._state_spec()}
        self._stats_views.pop(k - 1, None)
        self._count_views.pop(k - 1, None)

    def _close_epoch(self) -> None:
        self._acc_NC = self._acc_counts_N = None
        super()._close_epoch()

    # ------------------------------------------------------------------ reading
    def _counts_array(self, epoch: int) -> np.ndarray:
        return self._count_views[epoch]

    def state(self) -> dict[str, np.ndarray]:
        """The snapshot's running state, read-only memory maps by name."""
        return dict(self._state_views)

    def epoch_stats(self, epoch: int) -> np.ndarray:
        """float32 [F, N] per-sample statistics of a completed epoch (fields: ``per_epoch_fields``)."""
        return self._stats_views[self._epochs([epoch])[0]]


def run_split(work, items: list, threads: int) -> None:
    """Run ``work(share)`` on interleaved shares of ``items`` in ``threads`` single-threaded workers.

    For CPU work made of many small torch ops: each worker runs its ops with one intra-op
    thread, so no op waits at a barrier for a thread that the OS has descheduled.  torch's
    intra-op thread count is per OS thread (OpenMP) but its default for new threads is
    global, so the caller's count is restored afterwards.  Exceptions propagate.
    """
    threads = max(1, min(threads, len(items)))
    if threads == 1:
        work(items)
        return
    caller_threads = torch.get_num_threads()

    def single_threaded(share: list) -> None:
        torch.set_num_threads(1)
        work(share)

    try:
        with ThreadPoolExecutor(threads, thread_name_prefix="dprune-fold") as pool:
            for f in [pool.submit(single_threaded, items[k::threads]) for k in range(threads)]:
                f.result()
    finally:
        torch.set_num_threads(caller_threads)
