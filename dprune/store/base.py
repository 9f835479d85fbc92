"""What both store kinds share: the writer's life cycle and snapshot reads (the identity files: :mod:`.identity`).

Legend: N samples, C classes, E epochs.

A store is a directory::

    meta.json        format, kind, N, C, dtype, epochs planned/completed, generation, fingerprint, ...
    labels.npy       int64 [N], the given labels
    sample_ids.txt   one id (path or name) per line, N lines
    .dprune.lock     held (flock) by the one writer, see :mod:`dprune.locking`
    ...              the kind's own files (:mod:`.full`, :mod:`.summary`)

Writer life cycle, the same for both kinds: ``create`` or ``open(mode="a")`` (takes the
lock and deletes a killed writer's temporary files), then per epoch ``begin_epoch(e)``,
``write(e, indices, logits)`` any number of times, ``complete_epoch(e)``.  An epoch's files
are written under temporary names, allocated before they are mapped (a full disk is an
``OSError`` at allocation, not a SIGBUS later), fsynced, renamed into place, and only then
is ``meta.json`` atomically replaced with ``epochs_completed = e + 1``.  A writer killed at
any point leaves the complete epochs intact, and the interrupted epoch is simply recorded
again.  ``rollback(k)`` forgets epochs past k (a trainer resuming from an older checkpoint).

Readers (``open(mode="r")``) take no lock and read a **snapshot**: ``meta.json`` once, then
the files of the epochs it marks complete, opened at once.  Files are only ever replaced by
rename, never rewritten in place, so an open snapshot stays valid whatever the writer does
next.

Every completed epoch gets a random token in ``meta.json`` (``epoch_tokens``); rolling back
drops the tokens of the forgotten epochs, and recording an epoch again gives it a new one.
The **generation** of the first k epochs is a hash of their tokens: it changes exactly when
one of those epochs is re-recorded or rolled back.  Scores and manifests record the
generation and the number of epochs they were made from (:meth:`RunDirStore.identity`),
and are stale once it has moved.
"""
from __future__ import annotations

import hashlib
import shlex
import sys
import time
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np

from ..fileio import atomic_write_json, atomic_write_text
from ..labels import validate_labels
from ..locking import DirLock
from .identity import (DTYPES, FORMAT_VERSION, LABELS, META, SAMPLE_IDS, StoreError, fingerprint, generation_moved,
                       read_identity)


class RunDirStore:
    """Base of :class:`~.full.TrajectoryStore` and :class:`~.summary.SummaryStore`.

    Subclasses set ``KIND`` and ``DATA_FILES`` (globs of their data files, deleted on
    ``overwrite``) and implement ``_check_files``, ``_begin``, ``write``, ``_finish`` and
    ``_can_roll_back``.
    """

    KIND = ""
    DATA_FILES: tuple[str, ...] = ()

    def __init__(self, run_dir, meta: dict, labels_N: np.ndarray, sample_ids: list[str], lock: DirLock | None):
        self.run_dir = Path(run_dir)
        self.meta = meta
        self.labels = labels_N
        self.sample_ids = sample_ids
        self._lock = lock
        self._open_epoch: int | None = None

    # ------------------------------------------------------------------ identity
    @property
    def writable(self) -> bool:
        return self._lock is not None and self._lock.held

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

    def generation(self, epochs: int | None = None) -> str:
        """Identity of the content of the first ``epochs`` complete epochs (default all)."""
        k = self.epochs_completed if epochs is None else int(epochs)
        if not 0 <= k <= self.epochs_completed:
            raise ValueError(f"the store has {self.epochs_completed} complete epochs, not {k}")
        tokens = self.meta["epoch_tokens"][:k]
        return hashlib.sha256((self.meta["store_id"] + "".join(tokens)).encode()).hexdigest()[:32]

    def identity(self, epochs: int | None = None) -> dict:
        """What a result computed from the first ``epochs`` epochs (default all) was made from."""
        k = self.epochs_completed if epochs is None else int(epochs)
        return {"fingerprint": self.fingerprint, "generation": self.generation(k), "epochs": k}

    def check_identity(self, labels, n_classes: int, sample_ids: Sequence[str] | None = None) -> None:
        """Raise :class:`StoreError` unless this store was made for these labels, ids and classes.

        ``sample_ids`` None means the default ids ``"0" .. "N-1"``, as in :meth:`create`.  The
        message names the first difference (N, C, a label, an id), so a writer never records
        new epochs against another dataset's labels.
        """
        labels_N = validate_labels(labels, int(n_classes))
        ids = [str(i) for i in range(len(labels_N))] if sample_ids is None else [str(s) for s in sample_ids]
        diff = None
        if len(labels_N) != self.n_samples or len(ids) != self.n_samples:
            diff = f"it has N = {self.n_samples} samples, given {len(labels_N)} labels and {len(ids)} ids"
        elif int(n_classes) != self.n_classes:
            diff = f"it has C = {self.n_classes} classes, given n_classes = {n_classes}"
        elif fingerprint(labels_N, ids) != self.fingerprint:
            bad = np.flatnonzero(labels_N != self.labels)
            if bad.size:
                i = int(bad[0])
                diff = (f"{bad.size} labels differ (first: sample {i}, stored {self.labels[i]}, "
                        f"given {labels_N[i]})")
            else:
                i = next(k for k, (a, b) in enumerate(zip(self.sample_ids, ids)) if a != b)
                diff = f"the sample ids differ (first: sample {i}, stored {self.sample_ids[i]!r}, given {ids[i]!r})"
        if diff is not None:
            raise StoreError(f"{self.run_dir} holds the trajectory of another dataset or label set: {diff}; "
                             f"record into a new directory, or delete this one to start over")

    # ------------------------------------------------------------------ creation / opening
    @classmethod
    def create(cls, run_dir, labels, n_classes: int, *, sample_ids: Sequence[str] | None = None,
               dtype: str = "float16", epochs_planned: int = 0, labels_source: str = "", world_size: int = 1,
               command: str | None = None, overwrite: bool = False, extra_meta: dict | None = None, **kind_options):
        """Create an empty store for N = len(labels) samples and ``n_classes`` classes (C >= 2).

        Takes the directory's writer lock.  ``overwrite`` replaces an existing store.
        ``extra_meta``: further entries for ``meta.json`` (what the recording run wants readers to
        know; the store keeps them as they are).
        """
        run_dir = Path(run_dir)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
            raise ValueError(f"a store needs n_classes >= 2 (with one class there is nothing to score: every "
                             f"soft label is certain), got {n_classes!r}")
        labels_N = validate_labels(labels, int(n_classes))
        if len(labels_N) == 0:
            raise ValueError("a store needs at least one sample (labels is empty)")
        sample_ids = [str(i) for i in range(len(labels_N))] if sample_ids is None else [str(s) for s in sample_ids]
        if len(sample_ids) != len(labels_N):
            raise ValueError(f"sample_ids has length {len(sample_ids)}, labels has length {len(labels_N)}")
        bad = next((s for s in sample_ids if "\n" in s or "\r" in s), None)
        if bad is not None:
            raise ValueError(f"sample ids cannot contain line breaks: {bad!r}")
        if run_dir.exists() and not run_dir.is_dir():
            raise ValueError(f"{run_dir} exists and is not a directory")
        lock = DirLock(run_dir, f"writing the {cls.KIND} trajectory store")
        try:
            if (run_dir / META).exists() and not overwrite:
                raise StoreError(f"{run_dir} already holds a trajectory store (pass overwrite to replace it)")
            for pattern in cls.DATA_FILES if overwrite else ():
                for p in run_dir.glob(pattern):
                    p.unlink()
            np.save(run_dir / LABELS, labels_N)
            atomic_write_text(run_dir / SAMPLE_IDS, "".join(s + "\n" for s in sample_ids))
            meta = {
                "format_version": FORMAT_VERSION,
                "kind": cls.KIND,
                "n_samples": int(len(labels_N)),
                "n_classes": int(n_classes),
                "dtype": dtype,
                "epochs_planned": int(epochs_planned),
                "epochs_completed": 0,
                "store_id": uuid.uuid4().hex,
                "epoch_tokens": [],
                "fingerprint": fingerprint(labels_N, sample_ids),
                "labels_source": labels_source,
                "world_size": int(world_size),
                "command": command if command is not None else shlex.join(sys.argv),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            clash = set(extra_meta or {}) & set(meta)
            if clash:
                raise ValueError(f"extra_meta cannot set {sorted(clash)}")
            meta.update(extra_meta or {})
            store = cls(run_dir, meta, labels_N, sample_ids, lock, **kind_options)
            store._init_files()
            atomic_write_json(run_dir / META, store.meta)
            return store
        except BaseException:
            lock.release()
            raise

    @classmethod
    def open(cls, run_dir, mode: str = "r", **kind_options):
        """Open an existing store: ``"r"`` reads a snapshot, ``"a"`` resumes writing (takes the lock).

        Checks ``meta.json``, that labels and ids match the recorded fingerprint, and that
        every completed epoch's files exist at full size.  Problems raise :class:`StoreError`.
        """
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise StoreError(f"run directory not found: {run_dir}")
        lock = DirLock(run_dir, f"writing the {cls.KIND} trajectory store") if mode == "a" else None
        try:
            for _ in range(5):
                meta, labels_N, sample_ids = read_identity(run_dir, cls.KIND)
                store = cls(run_dir, meta, labels_N, sample_ids, lock, **kind_options)
                try:
                    store._check_files()
                except StoreError:
                    if lock is None and generation_moved(run_dir, meta):
                        continue  # the writer rolled back while we opened: take a new snapshot
                    raise
                if lock is None and generation_moved(run_dir, meta):
                    continue
                return store
            raise StoreError(f"{run_dir} keeps changing under the reader (a writer is rolling it back); try again")
        except BaseException:
            if lock is not None:
                lock.release()
            raise

    # ------------------------------------------------------------------ writing
    def begin_epoch(self, epoch: int) -> None:
        """Start (or restart) recording ``epoch``, which must be the next incomplete one.

        What an interrupted attempt at this epoch wrote is discarded: its observations
        would otherwise be counted twice when the epoch is replayed.
        """
        self._require_writable()
        if epoch != self.epochs_completed:
            raise StoreError(
                f"cannot record epoch {epoch}: {self.epochs_completed} epochs are complete, "
                f"so the next epoch to record is {self.epochs_completed}"
            )
        self._close_epoch()
        self._begin(epoch)
        self._open_epoch = epoch

    def _require_open(self, epoch: int) -> None:
        self._require_writable()
        if epoch != self._open_epoch:
            raise StoreError(f"epoch {epoch} is not open for writing (call begin_epoch({epoch}) first)")

    def complete_epoch(self, epoch: int) -> None:
        """Make the epoch durable (fsync, rename), then atomically mark it complete in ``meta.json``."""
        self._require_open(epoch)
        changes = self._finish(epoch) or {}
        self._open_epoch = None
        self._replace_meta(epochs_completed=epoch + 1, epoch_tokens=self.meta["epoch_tokens"] + [uuid.uuid4().hex[:16]],
                           epochs_planned=max(int(self.meta.get("epochs_planned", 0)), epoch + 1), **changes)
        self._after_complete(epoch)

    def rollback(self, epochs_completed: int) -> None:
        """Forget completed epochs past ``epochs_completed`` (atomically).

        For a trainer resuming from a checkpoint older than the store: the epochs recorded
        after that checkpoint came from model state that is lost, so they are recorded again.
        """
        self._require_writable()
        k = self.epochs_completed
        if epochs_completed == k:
            return
        if not 0 <= epochs_completed < k:
            raise StoreError(f"cannot roll back to {epochs_completed} epochs: {k} are complete")
        self._can_roll_back(epochs_completed)
        self._close_epoch()
        self._replace_meta(epochs_completed=int(epochs_completed),
                           epoch_tokens=self.meta["epoch_tokens"][:epochs_completed])

    def _require_writable(self) -> None:
        if not self.writable:
            raise StoreError(f"{self.run_dir} was opened read-only (or closed)")

    def _replace_meta(self, **changes) -> None:
        meta = dict(self.meta, **changes)
        atomic_write_json(self.run_dir / META, meta)
        self.meta = meta

    def close(self) -> None:
        """Drop an open epoch's buffers (its files are redone on resume) and release the lock."""
        self._close_epoch()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ reading
    def _epochs(self, epochs: Sequence[int] | None) -> list[int]:
        if epochs is None:
            return list(range(self.epochs_completed))
        epochs = [int(e) for e in epochs]
        bad = [e for e in epochs if not 0 <= e < self.epochs_completed]
        if bad:
            raise ValueError(f"epochs {bad} are not complete (complete: 0..{self.epochs_completed - 1})")
        return epochs

    def counts(self, epochs: Sequence[int] | None = None) -> np.ndarray:
        """int32 [E, N] observation counts of the completed epochs (or the given ones)."""
        epochs = self._epochs(epochs)
        out = np.empty((len(epochs), self.n_samples), np.int32)
        for i, e in enumerate(epochs):
            out[i] = self._counts_array(e)
        return out

    # ------------------------------------------------------------------ for subclasses
    def _init_files(self) -> None:
        """Write a new store's own files (before ``meta.json``)."""

    def _check_files(self) -> None:
        raise NotImplementedError

    def _begin(self, epoch: int) -> None:
        raise NotImplementedError

    def _finish(self, epoch: int) -> dict | None:
        """Make the open epoch durable; return changes for ``meta.json``."""
        raise NotImplementedError

    def _after_complete(self, epoch: int) -> None:
        """Clean up after ``meta.json`` marks the epoch complete."""

    def _can_roll_back(self, epochs_completed: int) -> None:
        """Raise :class:`StoreError` when the store cannot return to ``epochs_completed``."""

    def _close_epoch(self) -> None:
        self._open_epoch = None

    def _counts_array(self, epoch: int) -> np.ndarray:
        raise NotImplementedError
