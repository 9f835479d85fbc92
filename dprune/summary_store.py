"""Summary store: a trajectory's scoring statistics accumulated online, in O(N*C) space.

Legend: N samples, C classes, E epochs, B a batch of observations, n a chunk of samples.

Same writer API and run-directory identity as :class:`~dprune.store.TrajectoryStore`
(``create``/``open``, ``begin_epoch``, ``write``, ``complete_epoch``, ``state_dict``, the same
``meta.json`` with ``"kind": "summary"``, ``labels.npy`` and ``sample_ids.txt``), but instead
of every epoch's [N, C] logits it keeps what :func:`dprune.scoring.stats.compute_stats` needs:

    accum.sum.npy          fp32  [N, C]  sum of the open epoch's observations (CPU writes)
    accum.counts.npy       int32 [N]     observations so far in the open epoch
    state{s}.z_sum.npy     fp32  [N, C]  sum over observed epochs of the epoch-mean logits
    state{s}.p_sum.npy     fp32  [N, C]  sum over observed epochs of their softmax
    state{s}.prev.npy      dtype [N, C]  mean logits of each sample's last observed epoch (TDDS)
    state{s}.n_obs.npy     int64 [N]     observed epochs
    state{s}.nonfinite.npy bool  [N]     an observed logit was NaN or +-Inf
    epoch_0000.stats.npy   fp32  [5, N]  logp_label, correct, logit_margin, el2n, tdds_div
    epoch_0000.counts.npy  int32 [N]     that epoch's observations

Disk: (4 + 2 * (8 + bytes per logit)) * N*C bytes plus 24 bytes per sample per epoch,
against E * N*C * bytes per logit for the full store: 24 N*C for fp16, so the summary is
smaller from 13 epochs on (8 for fp32), and its size does not grow with E.

Epoch completion is atomic as in the full store.  The state after k complete epochs lives
in slot ``s = k % 2``: completing epoch k reads slot k % 2 and the accumulator, writes slot
(k + 1) % 2 and the epoch's files, fsyncs them, and only then atomically replaces
``meta.json`` with ``epochs_completed = k + 1``.  A writer killed at any point leaves slot
k % 2 and ``meta.json`` untouched, so the epoch is redone on resume (``begin_epoch`` clears
the accumulator) and no observation is counted twice.  The slot of k - 1 epochs stays valid
until the next completion starts, so :meth:`SummaryStore.rollback` can undo one epoch.

Each epoch's mean logits are rounded to the store dtype before they are folded in, as the
full store stores them, so scoring a summary store gives the full store's scores (up to the
order of float32 sums; exactly the same means when every sample's observations of an epoch
arrive in one ``write``, within the full store's running-mean rounding otherwise).

Writes from CUDA tensors accumulate on that GPU with the Triton scatter-add of
:mod:`dprune.kernels.accumulate`; other writes use ``torch.index_add_`` into the
memory-mapped accumulator.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .fileio import atomic_write_json, read_json
from .scoring.backends import resolve_backend
from .scoring.stats import PER_EPOCH_FIELDS, TrajectoryStats
from .store import META, RunDirStore, StoreError, TrajectoryStore, new_meta, prepare_run_dir, read_run_dir

KIND = "summary"
STORE_KINDS = ("full", "summary")
# fp32 bytes of the [n, C] working set of one fold chunk (each of the workers holds one).
_FOLD_BYTES = 16 << 20
_TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}


class SummaryStore(RunDirStore):
    """Online per-sample statistics of a logit trajectory; see the module docstring.

    Create with :meth:`create`, reopen with :meth:`open`; score with
    :func:`dprune.scoring.score_store`, which reads :meth:`iter_stats`.
    """

    def __init__(self, run_dir: Path, meta: dict, labels_N: np.ndarray, sample_ids: list[str], writable: bool):
        self.run_dir = Path(run_dir)
        self.meta = meta
        self.labels = labels_N
        self.sample_ids = sample_ids
        self.writable = writable
        self._open_epoch: int | None = None
        self._acc_NC: torch.Tensor | None = None
        self._acc_counts_N: torch.Tensor | None = None

    # ------------------------------------------------------------------ creation / opening
    @classmethod
    def create(
        cls,
        run_dir,
        labels,
        n_classes: int,
        *,
        sample_ids: Sequence[str] | None = None,
        dtype: str = "float16",
        epochs_planned: int = 0,
        labels_source: str = "",
        world_size: int = 1,
        command: str | None = None,
        overwrite: bool = False,
    ) -> "SummaryStore":
        """Create an empty summary store for N = len(labels) samples and ``n_classes`` classes.

        Arguments as for :meth:`dprune.store.TrajectoryStore.create`; ``dtype`` is the
        precision epoch means are rounded to (as the full store stores them).
        """
        run_dir, labels_N, sample_ids = prepare_run_dir(run_dir, labels, n_classes, sample_ids, dtype, overwrite,
                                                        stale=("epoch_*.npy", "state*.npy", "accum.*.npy"))
        meta = new_meta(KIND, labels_N, sample_ids, n_classes, dtype, epochs_planned=epochs_planned,
                        labels_source=labels_source, world_size=world_size, command=command)
        meta["previous_state_valid"] = False
        store = cls(run_dir, meta, labels_N, sample_ids, writable=True)
        store._write_empty_state(slot=0)
        atomic_write_json(run_dir / META, meta)
        return store

    @classmethod
    def open(cls, run_dir, mode: str = "r") -> "SummaryStore":
        """Open an existing summary store; ``mode`` is ``"r"`` (read) or ``"a"`` (resume writing).

        Checks ``meta.json``, the fingerprint of labels and ids, and that the current state
        and every completed epoch's files exist with the right shapes.
        """
        meta, labels_N, sample_ids = read_run_dir(run_dir, mode, KIND)
        store = cls(run_dir, meta, labels_N, sample_ids, writable=(mode == "a"))
        store._check_state(store.epochs_completed % 2)
        for e in range(store.epochs_completed):
            store._check_epoch_files(e)
        return store

    # ------------------------------------------------------------------ properties
    @property
    def kind(self) -> str:
        return KIND

    def nbytes(self) -> int:
        """Bytes of statistics on disk: the current state and the completed epochs' files."""
        paths = list(self._state_files(self.epochs_completed % 2).values())
        for e in range(self.epochs_completed):
            paths += [self._stats_file(e), self._counts_file(e)]
        return sum(p.stat().st_size for p in paths)

    # ------------------------------------------------------------------ files
    def _state_files(self, slot: int) -> dict[str, Path]:
        return {k: self.run_dir / f"state{slot}.{k}.npy" for k in ("z_sum", "p_sum", "prev", "n_obs", "nonfinite")}

    def _state_specs(self) -> dict[str, tuple[tuple, np.dtype]]:
        N, C = self.n_samples, self.n_classes
        return {
            "z_sum": ((N, C), np.dtype(np.float32)),
            "p_sum": ((N, C), np.dtype(np.float32)),
            "prev": ((N, C), self.dtype),
            "n_obs": ((N,), np.dtype(np.int64)),
            "nonfinite": ((N,), np.dtype(np.bool_)),
        }

    def _stats_file(self, epoch: int) -> Path:
        return self.run_dir / f"epoch_{epoch:04d}.stats.npy"

    def _counts_file(self, epoch: int) -> Path:
        return self.run_dir / f"epoch_{epoch:04d}.counts.npy"

    def _write_empty_state(self, slot: int) -> None:
        for key, path in self._state_files(slot).items():
            shape, dtype = self._state_specs()[key]
            mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            mm.flush()
            del mm
            _fsync(path)

    def _open_state(self, slot: int, mode: str) -> dict[str, np.ndarray]:
        if mode == "w+":
            return {k: np.lib.format.open_memmap(p, mode="w+", dtype=self._state_specs()[k][1],
                                                 shape=self._state_specs()[k][0])
                    for k, p in self._state_files(slot).items()}
        return {k: np.load(p, mmap_mode=mode, allow_pickle=False) for k, p in self._state_files(slot).items()}

    def _check_array(self, path: Path, shape: tuple, dtype: np.dtype, what: str) -> None:
        if not path.exists():
            raise StoreError(f"{what} but {path.name} is missing")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise StoreError(f"{path} is corrupt or truncated: {e}") from None
        if arr.shape != shape or arr.dtype != dtype:
            raise StoreError(f"{path}: expected {dtype} {shape}, found {arr.dtype} {arr.shape}")

    def _check_state(self, slot: int) -> None:
        for key, path in self._state_files(slot).items():
            shape, dtype = self._state_specs()[key]
            self._check_array(path, shape, dtype, f"{self.epochs_completed} epochs are complete")

    def _check_epoch_files(self, epoch: int) -> None:
        what = f"epoch {epoch} is marked complete"
        self._check_array(self._stats_file(epoch), (len(PER_EPOCH_FIELDS), self.n_samples), np.dtype(np.float32), what)
        self._check_array(self._counts_file(epoch), (self.n_samples,), np.dtype(np.int32), what)

    # ------------------------------------------------------------------ writing
    def begin_epoch(self, epoch: int) -> None:
        """Start (or restart) recording ``epoch``, which must be the next incomplete one.

        The accumulator is cleared: observations of an interrupted attempt at this epoch
        would otherwise be counted twice when the epoch is replayed.
        """
        self._require_writable()
        if epoch != self.epochs_completed:
            raise StoreError(
                f"cannot record epoch {epoch}: {self.epochs_completed} epochs are complete, "
                f"so the next epoch to record is {self.epochs_completed}"
            )
        self._close_epoch()
        self._open_epoch = epoch

    def write(self, epoch: int, indices_B, logits_BC) -> None:
        """Add a batch of observations: ``logits_BC[i]`` is one observation of sample ``indices_B[i]``.

        Indices may repeat, within the batch and across calls; the epoch's value for a sample
        is the mean of its observations.  Accepts numpy arrays or (CPU or CUDA) torch
        tensors; the first write of an epoch decides where it accumulates.
        """
        self._require_writable()
        if epoch != self._open_epoch:
            raise StoreError(f"epoch {epoch} is not open for writing (call begin_epoch({epoch}) first)")
        idx = torch.as_tensor(indices_B)
        z = torch.as_tensor(logits_BC)
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
            self._allocate_accumulator(z.device)
        dev = self._acc_NC.device
        idx, z = idx.to(dev, torch.int64), z.to(dev)
        if dev.type == "cuda":
            from dprune.kernels.accumulate import scatter_add_rows

            scatter_add_rows(self._acc_NC, self._acc_counts_N, idx, z)
        else:
            self._acc_NC.index_add_(0, idx, z.float())
            self._acc_counts_N.index_add_(0, idx, torch.ones(len(idx), dtype=torch.int32))

    def _allocate_accumulator(self, device: torch.device) -> None:
        N, C = self.n_samples, self.n_classes
        if device.type == "cuda":
            self._acc_NC = torch.zeros(N, C, dtype=torch.float32, device=device)
            self._acc_counts_N = torch.zeros(N, dtype=torch.int32, device=device)
            return
        # Fresh files read as zeros; memory-mapped so an ImageNet-sized [N, C] stays on disk.
        acc = np.lib.format.open_memmap(self.run_dir / "accum.sum.npy", mode="w+", dtype=np.float32, shape=(N, C))
        cnt = np.lib.format.open_memmap(self.run_dir / "accum.counts.npy", mode="w+", dtype=np.int32, shape=(N,))
        self._acc_NC, self._acc_counts_N = torch.from_numpy(acc), torch.from_numpy(cnt)

    def complete_epoch(self, epoch: int) -> None:
        """Fold the epoch into the statistics, then atomically mark it complete in ``meta.json``."""
        self._require_writable()
        if epoch != self._open_epoch:
            raise StoreError(f"epoch {epoch} is not open for writing")
        if self.meta.get("previous_state_valid"):
            # The fold below overwrites the slot that rollback() would return to.
            self._replace_meta(previous_state_valid=False)
        src = self._open_state(epoch % 2, "r")
        dst = self._open_state((epoch + 1) % 2, "w+")
        stats = np.lib.format.open_memmap(self._stats_file(epoch), mode="w+", dtype=np.float32,
                                          shape=(len(PER_EPOCH_FIELDS), self.n_samples))
        counts = np.lib.format.open_memmap(self._counts_file(epoch), mode="w+", dtype=np.int32, shape=(self.n_samples,))
        chunk = max(1, _FOLD_BYTES // (self.n_classes * 4 * 8))

        def fold(starts: list[int]) -> None:
            for a in starts:
                self._fold_rows(a, min(a + chunk, self.n_samples), src, dst, stats, counts)

        run_split(fold, list(range(0, self.n_samples, chunk)), torch.get_num_threads())
        for arr in (*dst.values(), stats, counts):
            arr.flush()
        del src, dst, stats, counts
        for path in (*self._state_files((epoch + 1) % 2).values(), self._stats_file(epoch), self._counts_file(epoch)):
            _fsync(path)
        self._close_epoch()
        self._replace_meta(epochs_completed=epoch + 1, previous_state_valid=True,
                           epochs_planned=max(int(self.meta.get("epochs_planned", 0)), epoch + 1))
        for name in ("accum.sum.npy", "accum.counts.npy"):
            (self.run_dir / name).unlink(missing_ok=True)

    def _fold_rows(self, a: int, b: int, src: dict, dst: dict, stats: np.ndarray, counts: np.ndarray) -> None:
        """Fold the open epoch's rows [a, b) into the next state slot and the epoch's files."""
        tdt = _TORCH_DTYPES[self.meta["dtype"]]
        if self._acc_NC is None:  # nothing was written this epoch
            sums, cnt = torch.zeros(b - a, self.n_classes), torch.zeros(b - a, dtype=torch.int32)
        else:
            sums, cnt = self._acc_NC[a:b].cpu(), self._acc_counts_N[a:b].cpu()
        obs = cnt > 0
        # Rounded to the store dtype exactly as the full store stores an epoch's mean.
        mean = torch.where(obs[:, None], sums / cnt.clamp(min=1)[:, None], 0.0).to(tdt).float()
        prev = torch.from_numpy(np.array(src["prev"][a:b])).float()
        n_obs = torch.from_numpy(np.array(src["n_obs"][a:b]))
        y = torch.from_numpy(self.labels[a:b])
        # The epoch's statistics are those of epoch 1 of the two-epoch trajectory
        # [previous observed epoch, this epoch]: the reference's formulas, TDDS included.
        pair = _cpu_stats()(torch.stack([prev, mean]), torch.stack([n_obs > 0, obs]).to(torch.int32), y, threads=1)
        for i, field in enumerate(PER_EPOCH_FIELDS):
            stats[i, a:b] = getattr(pair, field)[1].numpy()
        p = torch.log_softmax(mean, -1).exp()
        dst["z_sum"][a:b] = (torch.from_numpy(np.array(src["z_sum"][a:b])) + torch.where(obs[:, None], mean, 0.0)).numpy()
        dst["p_sum"][a:b] = (torch.from_numpy(np.array(src["p_sum"][a:b])) + torch.where(obs[:, None], p, 0.0)).numpy()
        dst["prev"][a:b] = torch.where(obs[:, None], mean, prev).to(tdt).numpy()
        dst["n_obs"][a:b] = (n_obs + obs).numpy()
        # A row sum is finite unless the row holds NaN or +-Inf (or overflows: checked exactly).
        suspect = obs & ~torch.isfinite(mean.sum(-1))
        bad = torch.zeros_like(obs)
        bad[suspect] = ~torch.isfinite(mean[suspect]).all(-1)
        dst["nonfinite"][a:b] = np.asarray(src["nonfinite"][a:b]) | bad.numpy()
        counts[a:b] = cnt.numpy()

    def rollback(self, epochs_completed: int) -> None:
        """Forget the last completed epoch (atomically), for a trainer resuming from an older checkpoint.

        Only one epoch can be undone, and only until the next epoch is completed: the summary
        keeps the state before the last epoch, not the whole history.
        """
        self._require_writable()
        k = self.epochs_completed
        if epochs_completed == k:
            return
        if epochs_completed != k - 1 or not self.meta.get("previous_state_valid"):
            raise StoreError(
                f"cannot roll back a summary store from {k} to {epochs_completed} epochs: only the "
                f"last completed epoch can be undone, and only before another one is completed"
            )
        self._close_epoch()
        self._replace_meta(epochs_completed=epochs_completed, previous_state_valid=False)

    def set_epochs_planned(self, epochs: int) -> None:
        self._require_writable()
        self._replace_meta(epochs_planned=int(epochs))

    def state_dict(self) -> dict:
        """Position in the store, for training checkpoints."""
        return {"epochs_completed": self.epochs_completed, "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        """Check that a checkpoint belongs to this store and that no completed epoch is lost."""
        if state["fingerprint"] != self.fingerprint:
            raise StoreError("checkpoint was recorded for a different dataset (fingerprint mismatch)")
        if state["epochs_completed"] > self.epochs_completed:
            raise StoreError(
                f"checkpoint says {state['epochs_completed']} epochs were recorded, "
                f"but the store only has {self.epochs_completed} complete"
            )

    def _replace_meta(self, **changes) -> None:
        meta = dict(self.meta, **changes)
        atomic_write_json(self.run_dir / META, meta)
        self.meta = meta

    def _require_writable(self) -> None:
        if not self.writable:
            raise StoreError(f"{self.run_dir} was opened read-only")

    def _close_epoch(self) -> None:
        self._acc_NC = self._acc_counts_N = None
        self._open_epoch = None

    def close(self) -> None:
        self._close_epoch()

    # ------------------------------------------------------------------ reading
    def counts(self, epochs: Sequence[int] | None = None) -> np.ndarray:
        """int32 [E, N] observation counts of the completed epochs (or the given ones)."""
        epochs = self._epochs(epochs)
        out = np.empty((len(epochs), self.n_samples), np.int32)
        for i, e in enumerate(epochs):
            out[i] = np.load(self._counts_file(e), allow_pickle=False)
        return out

    def iter_stats(self, chunk_size: int) -> Iterator[tuple[int, int, TrajectoryStats]]:
        """Yield ``(start, stop, TrajectoryStats)`` over all samples and completed epochs.

        The same statistics :func:`~dprune.scoring.stats.compute_stats` gives on the full
        trajectory of these epochs.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        E, N = self.epochs_completed, self.n_samples
        state = self._open_state(E % 2, "r")
        per_epoch = [np.load(self._stats_file(e), mmap_mode="r", allow_pickle=False) for e in range(E)]
        nan = torch.tensor(float("nan"))
        for a in range(0, N, chunk_size):
            b = min(a + chunk_size, N)
            n_obs = torch.from_numpy(np.array(state["n_obs"][a:b]))
            observed = n_obs > 0
            denom = n_obs.clamp(min=1).float()[:, None]
            z_mean = torch.from_numpy(np.array(state["z_sum"][a:b])) / denom
            # The soft label's statistics as the reference computes them from the mean logits:
            # those of a one-epoch trajectory holding the mean.
            soft = _cpu_stats()(z_mean[None], observed[None].to(torch.int32), torch.from_numpy(self.labels[a:b]))
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
            )

    def _epochs(self, epochs: Sequence[int] | None) -> list[int]:
        if epochs is None:
            return list(range(self.epochs_completed))
        epochs = [int(e) for e in epochs]
        bad = [e for e in epochs if not 0 <= e < self.epochs_completed]
        if bad:
            raise ValueError(f"epochs {bad} are not complete (complete: 0..{self.epochs_completed - 1})")
        return epochs


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------- factory
def open_store(run_dir, mode: str = "r") -> TrajectoryStore | SummaryStore:
    """Open the store in ``run_dir``, full or summary according to its ``meta.json``."""
    meta = read_json(Path(run_dir) / META, "store metadata meta.json")
    kind = meta.get("kind", "full") if isinstance(meta, dict) else "full"
    return SummaryStore.open(run_dir, mode) if kind == KIND else TrajectoryStore.open(run_dir, mode)


def open_or_create_store(kind: str, run_dir, labels, n_classes: int, **create_kwargs) -> TrajectoryStore | SummaryStore:
    """Resume the store of ``kind`` (``"full"`` or ``"summary"``) in ``run_dir``, or create it.

    ``create_kwargs`` are those of :meth:`TrajectoryStore.create` / :meth:`SummaryStore.create`.
    An existing store of the other kind raises :class:`~dprune.store.StoreError`.
    """
    if kind not in STORE_KINDS:
        raise ValueError(f"unknown store kind {kind!r}; valid: {', '.join(STORE_KINDS)}")
    cls = SummaryStore if kind == KIND else TrajectoryStore
    if (Path(run_dir) / META).exists():
        store = open_store(run_dir, "a")
        found = KIND if isinstance(store, SummaryStore) else "full"
        if found != kind:
            raise StoreError(f"{run_dir} holds a {found} store, but a {kind} store was asked for")
        return store
    return cls.create(run_dir, labels, n_classes, **create_kwargs)


def _cpu_stats():
    """The CPU statistics kernel (the ``numba`` backend), imported on first use so that importing
    :mod:`dprune` does not load numba."""
    return resolve_backend("numba")[1]


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
