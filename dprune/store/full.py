"""The full trajectory store: every training sample's logits at every recorded epoch, on disk.

Files (beside those of :mod:`.base`)::

    epoch_0000.logits.npy        [N, C] fp16 (or fp32): mean of that epoch's observations
    epoch_0000.counts.npy        int32 [N]: observations in that epoch (0 = not observed)
    ...

Shapes: N samples, C classes, E epochs, B a batch of observations, n a chunk of samples.

An epoch is recorded into ``.epoch_XXXX.*.npy.tmp`` files, allocated in full before they are
mapped, and renamed into place by ``complete_epoch`` (see :mod:`.base` for the protocol).

Repeated observations of one sample within an epoch (``DistributedSampler`` padding,
P x K identity sampling) are merged batch by batch into a running mean (the rule of
:mod:`.means`): the stored value is the mean of the epoch's observations and the count says
how many there were.  A row observed for the first time in the epoch is written without
being read (its count, the epoch's written mask, is 0).  ``meta.json`` counts the values
saturated to +-65504 in an fp16 store (``saturated``).  Unobserved rows hold zeros.

Reading: a snapshot maps every complete epoch's files once (see :meth:`epoch_views`); chunk
reads are slices of those maps, so memory stays proportional to the chunk, not to N.
"""
from __future__ import annotations

import mmap
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..fileio import open_npy_for_writing, replace_durably, temp_name
from .base import RunDirStore
from .identity import StoreError, check_npy
from .means import FP16_MAX, merge_means, to_store_dtype


class TrajectoryStore(RunDirStore):
    """Memory-mapped per-(epoch, sample) logits with counts; see the module docstring.

    Create with :meth:`create`, reopen with :meth:`open`.  Writing is done by one process
    (rank 0 in distributed training): ``begin_epoch(e)``, any number of ``write(e, idx, z)``,
    then ``complete_epoch(e)``.
    """

    KIND = "full"
    DATA_FILES = ("epoch_*.npy",)

    def __init__(self, run_dir, meta, labels_N, sample_ids, lock):
        super().__init__(run_dir, meta, labels_N, sample_ids, lock)
        self._logits_mm: np.memmap | None = None
        self._counts_mm: np.memmap | None = None
        self._views: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._saturated = 0

    def nbytes(self) -> int:
        """Bytes of logits held by the completed epochs."""
        return self.epochs_completed * self.n_samples * self.n_classes * self.dtype.itemsize

    def _paths(self, epoch: int) -> tuple[Path, Path]:
        return (self.run_dir / f"epoch_{epoch:04d}.logits.npy", self.run_dir / f"epoch_{epoch:04d}.counts.npy")

    def _check_files(self) -> None:
        for e in range(self.epochs_completed):
            self._map_epoch(e)

    def _map_epoch(self, epoch: int) -> None:
        logits, counts = self._paths(epoch)
        what = f"epoch {epoch} is marked complete"
        check_npy(logits, (self.n_samples, self.n_classes), self.dtype, what)
        check_npy(counts, (self.n_samples,), np.dtype(np.int32), what)
        try:
            self._views[epoch] = (np.load(logits, mmap_mode="r", allow_pickle=False),
                                  np.load(counts, mmap_mode="r", allow_pickle=False))
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot map epoch {epoch}: {e}") from None
        _advise(self._views[epoch][0], mmap.MADV_SEQUENTIAL)

    # ------------------------------------------------------------------ writing
    def _begin(self, epoch: int) -> None:
        logits, counts = epoch_temp_files(self.run_dir, epoch)
        self._logits_mm = open_npy_for_writing(logits, self.dtype, (self.n_samples, self.n_classes))
        self._counts_mm = open_npy_for_writing(counts, np.int32, (self.n_samples,))
        self._saturated = 0

    def write(self, epoch: int, indices_B, logits_BC) -> None:
        """Add a batch of observations: ``logits_BC[i]`` is one observation of sample ``indices_B[i]``.

        Indices may repeat, within the batch and across calls; the stored row is the mean.
        Accepts numpy arrays or (CPU or GPU) torch tensors of any float dtype.
        """
        self._require_open(epoch)
        idx, z = check_batch(indices_B, logits_BC, self.n_samples, self.n_classes)
        if len(idx):
            self._saturated += merge_batch(self._logits_mm, self._counts_mm, idx, z)

    def add_saturated(self, count: int) -> None:
        """Count ``count`` more saturated values in the open epoch (written by other processes)."""
        self._saturated += int(count)

    def put(self, epoch: int, start: int, logits_nC, counts_n) -> None:
        """Set rows ``[start, start + n)`` of the open epoch to already-averaged logits and counts.

        For importing trajectories whose per-epoch means are known (``write`` averages raw
        observations instead).  Refuses values the store cannot hold: counts that are not
        integers in [0, 2^31), and, in an fp16 store, finite logits beyond +-65504 (they
        would become infinite; use an fp32 store).
        """
        self._require_open(epoch)
        z = _to_numpy(logits_nC, float_out=True)
        c = np.asarray(counts_n)
        n = len(c)
        if z.shape != (n, self.n_classes) or c.ndim != 1 or not 0 <= start <= start + n <= self.n_samples:
            raise ValueError(f"expected logits [n, {self.n_classes}] and counts [n] inside [0, {self.n_samples}), "
                             f"got {z.shape} and {c.shape} at {start}")
        if not np.issubdtype(z.dtype, np.floating):
            raise ValueError(f"logits must be floating point, got dtype {z.dtype}")
        c = _check_counts(c)
        observed = c > 0
        if self.dtype == np.float16 and n:
            with np.errstate(invalid="ignore"):
                too_big = observed[:, None] & np.isfinite(z) & (np.abs(z) > FP16_MAX)
            if too_big.any():
                r, col = np.argwhere(too_big)[0]
                raise ValueError(f"logit {z[r, col]:g} (sample {start + r}, class {col}) does not fit the fp16 "
                                 f"store (largest finite fp16: {FP16_MAX:g}); import with dtype float32")
        with np.errstate(over="ignore", invalid="ignore"):
            self._logits_mm[start : start + n] = np.where(observed[:, None], z, 0).astype(self.dtype)
        self._counts_mm[start : start + n] = c

    def _finish(self, epoch: int) -> dict:
        logits, counts = self._paths(epoch)
        for mm in (self._logits_mm, self._counts_mm):
            mm.flush()
        self._logits_mm = self._counts_mm = None
        for path in (logits, counts):
            replace_durably(temp_name(path), path)
        saturated = int(self.meta.get("saturated", 0)) + self._saturated
        return {"saturated": saturated} if saturated else {}

    def _after_complete(self, epoch: int) -> None:
        self._map_epoch(epoch)

    def _can_roll_back(self, epochs_completed: int) -> None:
        for e in range(epochs_completed, self.epochs_completed):
            self._views.pop(e, None)

    def _close_epoch(self) -> None:
        self._logits_mm = self._counts_mm = None
        super()._close_epoch()

    # ------------------------------------------------------------------ reading
    def _counts_array(self, epoch: int) -> np.ndarray:
        return self._views[epoch][1]

    def epoch_views(self, epochs: Sequence[int] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(logits [N, C], counts [N])]`` read-only memory maps of the snapshot's epochs.

        Slicing them reads only the rows asked for; this is the zero-copy path the CPU scoring
        kernels take.
        """
        return [self._views[e] for e in self._epochs(epochs)]

    def release(self, start: int, stop: int) -> None:
        """Drop samples ``[start, stop)`` of every mapped epoch from this process's memory.

        The pages stay in the system's page cache (a later read is cheap), but leave the
        process's resident set, so reading a store of any size takes memory proportional to
        the chunk read, not to the store.
        """
        row = self.n_classes * self.dtype.itemsize
        for z, _ in self._views.values():
            _advise(z, mmap.MADV_DONTNEED, z.offset + start * row, (stop - start) * row)

    def read(self, start: int, stop: int, epochs: Sequence[int] | None = None, out: np.ndarray | None = None):
        """Samples ``[start, stop)`` of the completed epochs: (logits [E, n, C] in the store dtype, counts [E, n]).

        ``out`` may be a reusable buffer of shape at least [E, n, C] and the store dtype.
        One sequential copy per epoch from the mapped files.
        """
        epochs = self._epochs(epochs)
        if not 0 <= start <= stop <= self.n_samples:
            raise ValueError(f"sample range [{start}, {stop}) is outside [0, {self.n_samples})")
        n, C = stop - start, self.n_classes
        if out is None:
            out = np.empty((len(epochs), n, C), self.dtype)
        else:
            out = out.reshape(-1)[: len(epochs) * n * C].reshape(len(epochs), n, C)
        counts = np.empty((len(epochs), n), np.int32)
        for i, e in enumerate(epochs):
            z, c = self._views[e]
            np.copyto(out[i], z[start:stop])
            counts[i] = c[start:stop]
        return out, counts

    def iter_chunks(self, chunk_size: int, epochs: Sequence[int] | None = None) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """Yield ``(start, stop, logits [E, n, C], counts [E, n])`` over all samples.

        One buffer is reused across chunks: copy what you keep.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        epochs = self._epochs(epochs)
        buf = np.empty((len(epochs), min(chunk_size, self.n_samples), self.n_classes), self.dtype)
        for start in range(0, self.n_samples, chunk_size):
            stop = min(start + chunk_size, self.n_samples)
            logits, counts = self.read(start, stop, epochs, out=buf)
            yield start, stop, logits, counts


def epoch_temp_files(run_dir, epoch: int) -> tuple[Path, Path]:
    """The open epoch's temporary (logits, counts) files, which ``complete_epoch`` renames into place."""
    run_dir = Path(run_dir)
    return (temp_name(run_dir / f"epoch_{epoch:04d}.logits.npy"), temp_name(run_dir / f"epoch_{epoch:04d}.counts.npy"))


def check_batch(indices_B, logits_BC, n_samples: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch of observations as numpy (int64 indices [B], float logits [B, C]), or ValueError."""
    idx = _to_numpy(indices_B)
    z = _to_numpy(logits_BC, float_out=True)
    if idx.ndim != 1 or z.ndim != 2 or z.shape != (len(idx), n_classes):
        raise ValueError(f"expected indices [B] and logits [B, {n_classes}], got {idx.shape} and {z.shape}")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"sample indices must be integers, got dtype {idx.dtype}")
    if not np.issubdtype(z.dtype, np.floating):
        raise ValueError(f"logits must be floating point, got dtype {z.dtype}")
    idx = idx.astype(np.int64, copy=False)
    if len(idx) and (idx.min() < 0 or idx.max() >= n_samples):
        raise ValueError(f"sample indices out of range [0, {n_samples}): min {idx.min()}, max {idx.max()}")
    return idx, z


def merge_batch(logits_NC, counts_N, idx_B: np.ndarray, z_BC: np.ndarray) -> int:
    """Fold a batch into the running means, in place; return how many values were saturated.

    ``logits_NC`` (the store dtype) and ``counts_N`` (int32) hold the means and counts so far;
    ``idx_B`` may repeat (the batch's observations of one sample are summed in batch order).
    Only rows already observed this epoch (count > 0) are read.  Whoever applies it (the writer
    of the store, or each rank for its own rows, :mod:`.parts`) applies the rule of :mod:`.means`.
    """
    order = np.argsort(idx_B, kind="stable")
    idx_sorted = idx_B[order]
    starts = np.flatnonzero(np.r_[True, idx_sorted[1:] != idx_sorted[:-1]])
    if len(starts) == len(idx_B):  # no sample twice in the batch: each observation is its own sum
        uniq, k, sums = idx_B, np.ones(len(idx_B), np.int64), z_BC.astype(np.float32, copy=False)
    else:
        uniq = idx_sorted[starts]
        k = np.diff(np.r_[starts, len(idx_sorted)])
        sums = np.add.reduceat(z_BC[order].astype(np.float32, copy=False), starts, axis=0)
    c_old = counts_N[uniq]
    m_old = np.zeros(sums.shape, np.float32)
    seen = np.flatnonzero(c_old)
    if len(seen):
        m_old[seen] = logits_NC[uniq[seen]]
    m_new, saturated = to_store_dtype(merge_means(m_old, c_old, sums, k), logits_NC.dtype)
    logits_NC[uniq] = m_new
    counts_N[uniq] = (c_old + k).astype(np.int32)
    return saturated


def _advise(mm: np.memmap, advice: int, start: int = 0, length: int | None = None) -> None:
    """``madvise`` on a numpy memmap's mapping (page-aligned inward); a no-op where unsupported."""
    m = getattr(mm, "_mmap", None)
    if m is None or not hasattr(m, "madvise"):
        return
    page = mmap.PAGESIZE
    end = len(m) if length is None else min(len(m), start + length)
    a = -(-start // page) * page
    b = (end // page) * page if end < len(m) else end
    if b > a:
        try:
            m.madvise(advice, a, b - a)
        except (OSError, ValueError):
            pass


def _check_counts(c: np.ndarray) -> np.ndarray:
    """Counts as int32, refusing non-integers, negatives and values beyond int32."""
    if c.size and c.dtype == np.bool_:
        raise ValueError("counts must be integers, got booleans")
    if c.size and not np.issubdtype(c.dtype, np.integer):
        with np.errstate(invalid="ignore"):
            integral = np.isfinite(c).all() and (c == np.round(c)).all()
        if not integral:
            bad = c[~(np.isfinite(c) & (c == np.round(c)))][0]
            raise ValueError(f"counts must be whole numbers, got {bad!r}")
    if c.size and (c.min() < 0 or c.max() > np.iinfo(np.int32).max):
        raise ValueError(f"counts must lie in [0, {np.iinfo(np.int32).max}], got range [{c.min()}, {c.max()}]")
    return c.astype(np.int32)


def _to_numpy(x, float_out: bool = False) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, possibly on a GPU; numpy has no bfloat16
        x = x.detach().cpu()
        if float_out and str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    return np.asarray(x)
