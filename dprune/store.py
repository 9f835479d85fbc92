"""The trajectory store: every training sample's logits at every recorded epoch, on disk.

Layout of a run directory (see ``DESIGN.md``, "Trajectory store")::

    meta.json                    format, N, C, dtype, epochs planned/completed, fingerprint, ...
    labels.npy                   int64 [N], the given labels
    sample_ids.txt               one id (path or name) per line, N lines
    epoch_0000.logits.npy        [N, C] fp16 (or fp32): mean of that epoch's observations
    epoch_0000.counts.npy        int32 [N]: observations in that epoch (0 = not observed)
    ...

Shapes: N samples, C classes, E epochs, B a batch of observations.

Completion protocol: the logits and counts of epoch ``e`` are written in place, flushed and
fsynced; only then is ``meta.json`` atomically replaced with ``epochs_completed = e + 1``.
Readers only ever look at epochs below ``epochs_completed``, so a killed writer leaves a
store whose complete epochs are intact and whose partial epoch is simply redone on resume
(:meth:`TrajectoryStore.begin_epoch` resets it).

Repeated observations of one sample within an epoch (``DistributedSampler`` padding,
P x K identity sampling) are merged as a running mean, computed in fp32:
``m <- m + (sum_new - k * m) / (c + k)`` where ``c`` observations are already stored and
``k`` arrive.  The stored value is thus the mean of the epoch's observations and the count
says how many there were.

Reads stream sample chunks with ``readinto`` into a caller-sized buffer, so scoring a
31 GB ImageNet-scale trajectory needs memory proportional to the chunk, not to N.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .fileio import atomic_write_json, atomic_write_text, read_json

FORMAT_VERSION = 1
DTYPES = {"float16": np.float16, "float32": np.float32}
META = "meta.json"
LABELS = "labels.npy"
SAMPLE_IDS = "sample_ids.txt"


class StoreError(ValueError):
    """A run directory that is missing, corrupt, truncated or used out of order."""


def fingerprint(labels_N: np.ndarray, sample_ids: Sequence[str]) -> dict:
    """Identity of a training set: its size and a SHA-256 of the ordered ids and labels.

    Two runs over the same samples in the same order with the same labels have the same
    fingerprint; a manifest is only applied to a dataset with a matching fingerprint.
    """
    labels_N = np.ascontiguousarray(labels_N, dtype="<i8")
    h = hashlib.sha256()
    h.update(str(len(labels_N)).encode())
    h.update(labels_N.tobytes())
    for sid in sample_ids:
        h.update(sid.encode("utf-8"))
        h.update(b"\n")
    return {"n_samples": int(len(labels_N)), "sha256": h.hexdigest()}


def validate_labels(labels, n_classes: int | None, n_samples: int | None = None) -> np.ndarray:
    """Return labels as int64 [N] or raise ``ValueError`` naming what is wrong."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D [N], got shape {arr.shape}")
    if n_samples is not None and len(arr) != n_samples:
        raise ValueError(f"labels have length {len(arr)}, expected N = {n_samples}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"labels must be integers, got dtype {arr.dtype} with non-integer values")
    arr = arr.astype(np.int64)
    if arr.size and n_classes is not None:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= n_classes:
            bad = int(np.flatnonzero((arr < 0) | (arr >= n_classes))[0])
            raise ValueError(
                f"labels out of range [0, {n_classes}): found {arr[bad]} at index {bad} "
                f"(min {lo}, max {hi})"
            )
    return arr


def _npy_data_offset(path: Path) -> tuple[int, tuple, np.dtype]:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise StoreError(f"{path}: unsupported .npy version {version}")
        shape, fortran, dtype = read_header[version](f)
        if fortran:
            raise StoreError(f"{path}: Fortran-ordered arrays are not supported")
        return f.tell(), shape, dtype


def prepare_run_dir(run_dir, labels, n_classes: int, sample_ids, dtype: str, overwrite: bool, *, stale=()):
    """Validate a new store's identity and write ``labels.npy`` and ``sample_ids.txt``.

    Shared by the full and the summary store.  Returns ``(run_dir, labels_N, sample_ids)``.
    ``stale``: glob patterns of a previous store's data files to delete when overwriting.
    """
    run_dir = Path(run_dir)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if int(n_classes) < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    labels_N = validate_labels(labels, n_classes)
    if len(labels_N) == 0:
        raise ValueError("a store needs at least one sample (labels is empty)")
    if sample_ids is None:
        sample_ids = [str(i) for i in range(len(labels_N))]
    sample_ids = [str(s) for s in sample_ids]
    if len(sample_ids) != len(labels_N):
        raise ValueError(f"sample_ids has length {len(sample_ids)}, labels has length {len(labels_N)}")
    bad = next((s for s in sample_ids if "\n" in s or "\r" in s), None)
    if bad is not None:
        raise ValueError(f"sample ids cannot contain line breaks: {bad!r}")
    if (run_dir / META).exists() and not overwrite:
        raise StoreError(f"{run_dir} already holds a trajectory store (pass overwrite to replace it)")
    run_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for pattern in stale:
            for p in run_dir.glob(pattern):
                p.unlink()
    np.save(run_dir / LABELS, labels_N)
    atomic_write_text(run_dir / SAMPLE_IDS, "".join(s + "\n" for s in sample_ids))
    return run_dir, labels_N, sample_ids


def new_meta(kind: str, labels_N, sample_ids, n_classes: int, dtype: str, *, epochs_planned: int,
             labels_source: str, world_size: int, command: str | None) -> dict:
    """The ``meta.json`` of a new, empty store of ``kind`` ("full" or "summary")."""
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "n_samples": int(len(labels_N)),
        "n_classes": int(n_classes),
        "dtype": dtype,
        "epochs_planned": int(epochs_planned),
        "epochs_completed": 0,
        "fingerprint": fingerprint(labels_N, sample_ids),
        "labels_source": labels_source,
        "world_size": int(world_size),
        "command": command if command is not None else shlex.join(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def read_run_dir(run_dir, mode: str, kind: str) -> tuple[dict, np.ndarray, list[str]]:
    """Read and check a store's ``meta.json``, labels and ids: ``(meta, labels_N, sample_ids)``.

    Every problem (missing or corrupt files, wrong kind or format, labels or ids that do not
    match the recorded fingerprint) raises :class:`StoreError`.
    """
    if mode not in ("r", "a"):
        raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise StoreError(f"run directory not found: {run_dir}")
    try:
        meta = read_json(run_dir / META, "store metadata meta.json")
    except ValueError as e:
        raise StoreError(str(e)) from None
    if not isinstance(meta, dict):
        raise StoreError(f"{run_dir / META} is corrupt: expected a JSON object")
    if meta.get("kind", "full") != kind:
        raise StoreError(f"{run_dir} holds a {meta.get('kind', 'full')} store, not a {kind} store")
    required = ("format_version", "n_samples", "n_classes", "dtype", "epochs_completed", "fingerprint")
    missing = [k for k in required if k not in meta]
    if missing:
        raise StoreError(f"{run_dir / META} is corrupt: missing {', '.join(missing)}")
    if meta["format_version"] != FORMAT_VERSION:
        raise StoreError(f"{run_dir}: store format {meta['format_version']} is not supported (expected {FORMAT_VERSION})")
    if meta["dtype"] not in DTYPES:
        raise StoreError(f"{run_dir / META}: unknown dtype {meta['dtype']!r}")
    n = int(meta["n_samples"])
    try:
        labels_N = np.load(run_dir / LABELS, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise StoreError(f"{run_dir / LABELS} is missing or corrupt: {e}") from None
    labels_N = validate_labels(labels_N, int(meta["n_classes"]), n)
    try:
        sample_ids = (run_dir / SAMPLE_IDS).read_text(encoding="utf-8").split("\n")[:-1]
    except (OSError, UnicodeDecodeError) as e:
        raise StoreError(f"{run_dir / SAMPLE_IDS} is missing or corrupt: {e}") from None
    if len(sample_ids) != n:
        raise StoreError(f"{run_dir / SAMPLE_IDS} has {len(sample_ids)} ids, expected {n}")
    if fingerprint(labels_N, sample_ids) != meta["fingerprint"]:
        raise StoreError(f"{run_dir}: labels.npy / sample_ids.txt do not match the fingerprint in meta.json")
    return meta, labels_N, sample_ids


class RunDirStore:
    """What every store kind reads from its ``meta.json``: sizes, dtype, progress, identity."""

    meta: dict

    @property
    def n_samples(self) -> int:
        return int(self.meta["n_samples"])

    @property
    def n_classes(self) -> int:
        return int(self.meta["n_classes"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(DTYPES[self.meta["dtype"]])

    @property
    def epochs_completed(self) -> int:
        return int(self.meta["epochs_completed"])

    @property
    def fingerprint(self) -> dict:
        return dict(self.meta["fingerprint"])


@dataclass(frozen=True)
class _EpochFiles:
    logits: Path
    counts: Path


class TrajectoryStore(RunDirStore):
    """Memory-mapped per-(epoch, sample) logits with counts; see the module docstring.

    Create with :meth:`create`, reopen with :meth:`open`.  Writing is done by one process
    (rank 0 in distributed training): ``begin_epoch(e)``, any number of ``write(e, idx, z)``,
    then ``complete_epoch(e)``.
    """

    def __init__(self, run_dir: Path, meta: dict, labels_N: np.ndarray, sample_ids: list[str], writable: bool):
        self.run_dir = Path(run_dir)
        self.meta = meta
        self.labels = labels_N
        self.sample_ids = sample_ids
        self.writable = writable
        self._open_epoch: int | None = None
        self._logits_mm: np.memmap | None = None
        self._counts_mm: np.memmap | None = None
        self._offsets: dict[int, int] = {}

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
    ) -> "TrajectoryStore":
        """Create an empty store for N = len(labels) samples and ``n_classes`` classes."""
        run_dir, labels_N, sample_ids = prepare_run_dir(run_dir, labels, n_classes, sample_ids, dtype, overwrite,
                                                        stale=("epoch_*.npy",))
        meta = new_meta("full", labels_N, sample_ids, n_classes, dtype, epochs_planned=epochs_planned,
                        labels_source=labels_source, world_size=world_size, command=command)
        atomic_write_json(run_dir / META, meta)
        return cls(run_dir, meta, labels_N, sample_ids, writable=True)

    @classmethod
    def open(cls, run_dir, mode: str = "r") -> "TrajectoryStore":
        """Open an existing store; ``mode`` is ``"r"`` (read) or ``"a"`` (resume writing).

        Checks that ``meta.json`` is readable and complete, that labels and ids match the
        recorded fingerprint, and that every completed epoch's files exist at full size.
        """
        meta, labels_N, sample_ids = read_run_dir(run_dir, mode, "full")
        store = cls(run_dir, meta, labels_N, sample_ids, writable=(mode == "a"))
        for e in range(store.epochs_completed):
            store._check_epoch_files(e)
        return store

    def nbytes(self) -> int:
        """Bytes of logits held by the completed epochs."""
        return self.epochs_completed * self.n_samples * self.n_classes * self.dtype.itemsize

    def _files(self, epoch: int) -> _EpochFiles:
        return _EpochFiles(
            self.run_dir / f"epoch_{epoch:04d}.logits.npy",
            self.run_dir / f"epoch_{epoch:04d}.counts.npy",
        )

    def _check_epoch_files(self, epoch: int) -> None:
        f = self._files(epoch)
        expect = {f.logits: ((self.n_samples, self.n_classes), self.dtype), f.counts: ((self.n_samples,), np.dtype(np.int32))}
        for path, (shape, dtype) in expect.items():
            if not path.exists():
                raise StoreError(f"epoch {epoch} is marked complete but {path.name} is missing")
            try:
                offset, got_shape, got_dtype = _npy_data_offset(path)
            except (OSError, ValueError, EOFError, SyntaxError) as e:
                raise StoreError(f"{path} has a corrupt header: {e}") from None
            if tuple(got_shape) != shape or got_dtype != dtype:
                raise StoreError(f"{path}: expected {dtype} {shape}, found {got_dtype} {tuple(got_shape)}")
            size = path.stat().st_size
            need = offset + int(np.prod(shape)) * dtype.itemsize
            if size < need:
                raise StoreError(f"{path} is truncated: {size} bytes, expected {need}")
            if path == f.logits:
                self._offsets[epoch] = offset

    # ------------------------------------------------------------------ writing
    def begin_epoch(self, epoch: int) -> None:
        """Start (or restart) recording ``epoch``, which must be the next incomplete one.

        Files left by an interrupted attempt at this epoch are discarded: their partial
        observations would otherwise be counted twice when the epoch is replayed.
        """
        self._require_writable()
        if epoch != self.epochs_completed:
            raise StoreError(
                f"cannot record epoch {epoch}: {self.epochs_completed} epochs are complete, "
                f"so the next epoch to record is {self.epochs_completed}"
            )
        self._close_epoch()
        f = self._files(epoch)
        self._logits_mm = np.lib.format.open_memmap(f.logits, mode="w+", dtype=self.dtype, shape=(self.n_samples, self.n_classes))
        self._counts_mm = np.lib.format.open_memmap(f.counts, mode="w+", dtype=np.int32, shape=(self.n_samples,))
        self._open_epoch = epoch

    def write(self, epoch: int, indices_B, logits_BC) -> None:
        """Add a batch of observations: ``logits_BC[i]`` is one observation of sample ``indices_B[i]``.

        Indices may repeat, within the batch and across calls; the stored row is the mean.
        Accepts numpy arrays or (CPU or GPU) torch tensors.
        """
        self._require_writable()
        if epoch != self._open_epoch:
            raise StoreError(f"epoch {epoch} is not open for writing (call begin_epoch({epoch}) first)")
        idx = _to_numpy(indices_B).astype(np.int64, copy=False)
        z = _to_numpy(logits_BC, float_out=True)
        if idx.ndim != 1 or z.ndim != 2 or z.shape != (len(idx), self.n_classes):
            raise ValueError(
                f"expected indices [B] and logits [B, {self.n_classes}], got {idx.shape} and {z.shape}"
            )
        if len(idx) == 0:
            return
        if idx.min() < 0 or idx.max() >= self.n_samples:
            raise ValueError(f"sample indices out of range [0, {self.n_samples}): min {idx.min()}, max {idx.max()}")
        order = np.argsort(idx, kind="stable")
        idx_sorted = idx[order]
        starts = np.flatnonzero(np.r_[True, idx_sorted[1:] != idx_sorted[:-1]])
        uniq = idx_sorted[starts]
        k = np.diff(np.r_[starts, len(idx_sorted)]).astype(np.float32)
        sums = np.add.reduceat(z[order].astype(np.float32, copy=False), starts, axis=0)
        c_old = self._counts_mm[uniq].astype(np.float32)
        m_old = self._logits_mm[uniq].astype(np.float32)
        m_new = m_old + (sums - k[:, None] * m_old) / (c_old + k)[:, None]
        # A row observed for the first time has m_old = 0 and c_old = 0, so m_new = sums / k
        # exactly; NaN/Inf observations propagate and are flagged by the scorers.
        with np.errstate(over="ignore", invalid="ignore"):
            self._logits_mm[uniq] = m_new.astype(self.dtype)
        self._counts_mm[uniq] = (c_old + k).astype(np.int32)

    def put(self, epoch: int, start: int, logits_nC, counts_n) -> None:
        """Set rows ``[start, start + n)`` of the open epoch to already-averaged logits and counts.

        For importing trajectories whose per-epoch means are known (``write`` averages raw
        observations instead).
        """
        self._require_writable()
        if epoch != self._open_epoch:
            raise StoreError(f"epoch {epoch} is not open for writing (call begin_epoch({epoch}) first)")
        z = _to_numpy(logits_nC, float_out=True)
        c = np.asarray(counts_n)
        n = len(c)
        if z.shape != (n, self.n_classes) or c.ndim != 1 or not 0 <= start <= start + n <= self.n_samples:
            raise ValueError(f"expected logits [n, {self.n_classes}] and counts [n] inside [0, {self.n_samples}), "
                             f"got {z.shape} and {c.shape} at {start}")
        if n and c.min() < 0:
            raise ValueError("counts must be non-negative")
        with np.errstate(over="ignore", invalid="ignore"):
            self._logits_mm[start : start + n] = np.where(c[:, None] > 0, z, 0).astype(self.dtype)
        self._counts_mm[start : start + n] = c.astype(np.int32)

    def complete_epoch(self, epoch: int) -> None:
        """Flush the epoch to disk, then atomically mark it complete in ``meta.json``."""
        self._require_writable()
        if epoch != self._open_epoch:
            raise StoreError(f"epoch {epoch} is not open for writing")
        f = self._files(epoch)
        self._close_epoch()
        for path in (f.logits, f.counts):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        meta = dict(self.meta)
        meta["epochs_completed"] = epoch + 1
        meta["epochs_planned"] = max(int(meta.get("epochs_planned", 0)), epoch + 1)
        atomic_write_json(self.run_dir / META, meta)
        self.meta = meta
        self._check_epoch_files(epoch)

    def rollback(self, epochs_completed: int) -> None:
        """Forget completed epochs past ``epochs_completed`` (atomically).

        For a trainer resuming from a checkpoint older than the store: the epoch recorded
        after that checkpoint came from model state that is lost, so it is recorded again.
        """
        self._require_writable()
        if not 0 <= epochs_completed <= self.epochs_completed:
            raise StoreError(f"cannot roll back to {epochs_completed} epochs: {self.epochs_completed} are complete")
        self._close_epoch()
        meta = dict(self.meta, epochs_completed=int(epochs_completed))
        atomic_write_json(self.run_dir / META, meta)
        self.meta = meta

    def set_epochs_planned(self, epochs: int) -> None:
        self._require_writable()
        meta = dict(self.meta, epochs_planned=int(epochs))
        atomic_write_json(self.run_dir / META, meta)
        self.meta = meta

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

    def _require_writable(self) -> None:
        if not self.writable:
            raise StoreError(f"{self.run_dir} was opened read-only")

    def _close_epoch(self) -> None:
        for mm in (self._logits_mm, self._counts_mm):
            if mm is not None:
                mm.flush()
        self._logits_mm = self._counts_mm = None
        self._open_epoch = None

    def close(self) -> None:
        self._close_epoch()

    # ------------------------------------------------------------------ reading
    def counts(self, epochs: Sequence[int] | None = None) -> np.ndarray:
        """int32 [E, N] observation counts of the completed epochs (or the given ones)."""
        epochs = self._epochs(epochs)
        out = np.empty((len(epochs), self.n_samples), np.int32)
        for i, e in enumerate(epochs):
            out[i] = np.load(self._files(e).counts, allow_pickle=False)
        return out

    def read(self, start: int, stop: int, epochs: Sequence[int] | None = None, out: np.ndarray | None = None):
        """Samples ``[start, stop)`` of the completed epochs: (logits [E, n, C] in the store dtype, counts [E, n]).

        ``out`` may be a reusable buffer of shape at least [E, n, C] and the store dtype.
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
        row = C * self.dtype.itemsize
        for i, e in enumerate(epochs):
            f = self._files(e)
            with open(f.logits, "rb", buffering=0) as fh:
                fh.seek(self._offsets[e] + start * row)
                view = memoryview(out[i]).cast("B")
                got = fh.readinto(view)
                if got != n * row:
                    raise StoreError(f"{f.logits} is truncated (read {got} of {n * row} bytes)")
            counts[i] = np.load(f.counts, mmap_mode="r")[start:stop]
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

    def _epochs(self, epochs: Sequence[int] | None) -> list[int]:
        if epochs is None:
            return list(range(self.epochs_completed))
        epochs = [int(e) for e in epochs]
        bad = [e for e in epochs if not 0 <= e < self.epochs_completed]
        if bad:
            raise ValueError(f"epochs {bad} are not complete (complete: 0..{self.epochs_completed - 1})")
        return epochs


def _to_numpy(x, float_out: bool = False) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, possibly on a GPU; numpy has no bfloat16
        x = x.detach().cpu()
        if float_out and str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    return np.asarray(x)
