"""Record a logit trajectory from any training loop: ``(sample indices, logits)`` per batch.

Legend: B batch, C classes, N training samples, W ranks.

A few lines in your own loop (plain torch, DDP, DeepSpeed, torchreid, timm scripts)::

    rec = dprune.Recorder("runs/x/trajectory", labels=train_labels, n_classes=C)
    for epoch in range(rec.sync(epochs_done), epochs):   # resume where the store is
        rec.begin_epoch(epoch)
        for x, y, idx in loader:                        # your dataset returns the sample index
            logits = model(x)
            rec.record(idx, logits)                     # every rank, every batch, same order
            ...
        rec.complete_epoch(epoch)                       # flushed and fsynced when it returns
    rec.close()

Under ``torch.distributed`` every rank calls every method (they are collectives); rank 0
gathers the batches of all ranks and owns the store, the other ranks keep nothing.

What happens per batch, on the training thread: the batch is gathered to rank 0 in the
model's dtype (no fp32 upcast; 16-bit floats travel as raw bits), copied to host memory
(pinned, ``non_blocking``, on a GPU) and queued.  A background writer thread applies the
queued writes to the store in order.  The queue is bounded (``queue_size`` batches): when
the store falls behind, ``record`` waits (back-pressure) instead of growing memory.  An
error in the writer thread is raised in the training process by the next ``record`` or
``complete_epoch``.  ``complete_epoch`` returns once every write of the epoch has been
applied and the epoch is durable (fsynced, marked complete); a kill at any moment leaves a
store whose complete epochs are intact, and the interrupted epoch is recorded again.
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Sequence

import torch

from .distributed import World, broadcast_object, gather_to_main, transport_device, world_of_process_group
from .store import StoreError, open_or_create_store


class RecorderError(RuntimeError):
    """The background writer failed; the message names the cause."""


class Recorder:
    """Record every training sample's logits at every epoch into a trajectory store.

    Parameters
    ----------
    store_dir : path
        The store's directory (created, or resumed if it holds a store of this dataset).
    labels : int array [N]
        The given labels, indexed by the same sample indices ``record`` receives (rank 0;
        other ranks may pass None).
    n_classes : int
        C, the width of the logits.
    sample_ids : list of str, optional
        Ids (e.g. image paths) of the N samples, so manifests can name files.
    kind : "full" or "summary"
        Every epoch's logits (E x N x C on disk), or O(N x C) running sums that give the
        same scores.
    dtype : "float16" or "float32"
        Precision of the stored logits.
    epochs : int
        Epochs planned (informational).
    queue_size : int
        Batches the writer may fall behind before ``record`` waits.
    world : World, optional
        Default: the initialised ``torch.distributed`` group, or a single process.
    meta : dict, optional
        Further entries for a new store's ``meta.json``.
    """

    def __init__(self, store_dir, *, labels=None, n_classes: int | None = None, sample_ids: Sequence[str] | None = None,
                 kind: str = "full", dtype: str = "float16", epochs: int = 0, queue_size: int = 8,
                 world: World | None = None, labels_source: str = "", command: str | None = None,
                 meta: dict | None = None):
        self.world = world or world_of_process_group()
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.store = None
        error = None
        if self.world.is_main:
            from .scoring.online import SummaryFold

            try:
                if labels is None or n_classes is None:
                    raise ValueError("rank 0 needs the labels and n_classes to create the store")
                self.store = open_or_create_store(kind, Path(store_dir), labels, n_classes, fold=SummaryFold(),
                                                  sample_ids=sample_ids, dtype=dtype, epochs_planned=epochs,
                                                  labels_source=labels_source, world_size=self.world.world_size,
                                                  command=command, extra_meta=meta)
            except (ValueError, OSError) as e:
                error = f"{type(e).__name__}: {e}"
        error = broadcast_object(self.world, error)  # every rank stops if rank 0 cannot open the store
        if error is not None:
            raise RecorderError(f"cannot open the trajectory store {store_dir}: {error}")
        self._queue_size = queue_size
        self._writer: _Writer | None = None
        self._epoch: int | None = None
        self._closed = False
        self._device = transport_device(self.world)

    # ------------------------------------------------------------------ epochs
    @property
    def epochs_completed(self) -> int:
        """Complete epochs in the store (the same on every rank)."""
        return broadcast_object(self.world, self.store.epochs_completed if self.store is not None else None)

    def sync(self, epochs_done: int | None = None) -> int:
        """Align the store with the training state you restored; return the epoch to start from.

        ``epochs_done``: epochs your checkpoint has finished (None: no checkpoint, start at 0).
        If the job died after an epoch was recorded but before its checkpoint was saved, the
        store is ahead: it is rolled back (that epoch came from lost model state and is
        recorded again).  A store behind the checkpoint is an error.
        """
        done = int(epochs_done or 0)
        error = None
        if self.store is not None:
            if self.store.epochs_completed < done:
                error = (f"the checkpoint has {done} epochs done but the store {self.store.run_dir} only "
                         f"{self.store.epochs_completed}")
            elif self.store.epochs_completed > done:
                self.store.rollback(done)
        error = broadcast_object(self.world, error)
        if error:
            raise StoreError(error)
        return done

    def begin_epoch(self, epoch: int) -> None:
        """Open ``epoch`` for recording: the next epoch the store lacks.

        Calling it again for the epoch that is open (a training loop that retries an epoch)
        restarts the epoch: the batches already queued are written first, then everything
        recorded of the epoch is discarded, so no observation is counted twice.
        """
        self._check_open("begin_epoch")
        if self.store is not None:
            if self._writer is not None:
                self._writer.flush()  # the store re-creates the epoch's files: nothing may still write them
            self.store.begin_epoch(epoch)
            if self._writer is None:
                self._writer = _Writer(self.store, self._queue_size)
        self._epoch = epoch

    def record(self, indices_B: torch.Tensor, logits_BC: torch.Tensor) -> None:
        """Queue one batch: ``logits_BC[i]`` is an observation of sample ``indices_B[i]``.

        Collective: every rank calls it for every batch, in the same order.
        """
        self._check_open("record")
        if self._epoch is None:
            raise StoreError("record() before begin_epoch()")
        z = logits_BC.detach()
        idx = torch.as_tensor(indices_B).detach()
        if self.world.distributed:
            gathered = gather_to_main(self.world, idx.to(self._device, torch.int64), z.to(self._device))
            if gathered is None:
                return
            idx, z = gathered
        self._writer.put(self._epoch, idx, z)

    def complete_epoch(self, epoch: int) -> None:
        """Wait for the epoch's writes, make it durable and mark it complete (collective)."""
        self._check_open("complete_epoch")
        error = None
        if self.store is not None:
            try:
                self._writer.flush()
                self.store.complete_epoch(epoch)
            except (RecorderError, OSError, ValueError) as e:
                error = e
        err = broadcast_object(self.world, None if error is None else f"{type(error).__name__}: {error}")
        self._epoch = None
        if err is not None:
            if error is not None:
                raise error
            raise RecorderError(f"rank 0 failed to complete epoch {epoch}: {err}")

    def close(self) -> None:
        """Stop the writer (an epoch not completed is recorded again on resume) and release the store."""
        if self._writer is not None:
            self._writer.stop()
            self._writer = None
        if self.store is not None:
            self.store.close()
        self._closed = True

    def _check_open(self, method: str) -> None:
        if self._closed:
            raise RecorderError(f"{method}() on a closed Recorder: make a new Recorder to record again")


class _Writer:
    """Applies queued batches to the store on a thread of its own (see the module docstring)."""

    _FLUSH = object()
    _STOP = object()

    def __init__(self, store, queue_size: int):
        self.store = store
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._flushed = threading.Event()
        self._pool = _HostBuffers(queue_size + 2)
        self._thread = threading.Thread(target=self._run, name="dprune-recorder-writer", daemon=True)
        self._thread.start()

    def put(self, epoch: int, idx: torch.Tensor, z: torch.Tensor) -> None:
        self._raise_if_failed()
        idx_host, z_host, event, release = self._pool.to_host(idx, z)
        while True:  # wait for room, but notice a writer that died meanwhile
            try:
                self._queue.put((epoch, idx_host, z_host, event, release), timeout=0.5)
                return
            except queue.Full:
                self._raise_if_failed()

    def flush(self) -> None:
        self._raise_if_failed()
        self._flushed.clear()
        self._queue.put(self._FLUSH)
        while not self._flushed.wait(0.5):
            self._raise_if_failed()
        self._raise_if_failed()

    def stop(self) -> None:
        self._queue.put(self._STOP)
        self._thread.join()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise RecorderError(f"the recorder's writer failed: {type(self.error).__name__}: {self.error}") \
                from self.error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            if item is self._FLUSH:
                self._flushed.set()
                continue
            epoch, idx, z, event, release = item
            try:
                if self.error is None:  # after a failure, drain without writing
                    if event is not None:
                        event.synchronize()
                    self.store.write(epoch, idx, z)
            except BaseException as e:  # surfaced on the training thread
                self.error = e
            finally:
                release()


class _HostBuffers:
    """Host copies of queued batches: pinned and asynchronous for GPU tensors, plain copies otherwise."""

    def __init__(self, n_buffers: int):
        self._free: queue.Queue = queue.Queue()
        self._n = n_buffers
        self._made = 0

    def to_host(self, idx: torch.Tensor, z: torch.Tensor):
        if z.device.type != "cuda":
            # The caller may reuse or modify its tensors after record() returns: copy.
            return idx.cpu().numpy().copy(), z.cpu().clone(), None, lambda: None
        buf = self._take(z.shape[0], z.shape[1], z.dtype)
        zb, ib = buf[0][: z.shape[0]], buf[1][: z.shape[0]]
        zb.copy_(z, non_blocking=True)
        ib.copy_(idx.to(torch.int64), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return ib, zb, event, lambda: self._free.put(buf)

    def _take(self, rows: int, cols: int, dtype):
        while True:
            if self._free.empty() and self._made < self._n:
                self._made += 1
                return (torch.empty(rows, cols, dtype=dtype, pin_memory=True),
                        torch.empty(rows, dtype=torch.int64, pin_memory=True))
            buf = self._free.get()
            if buf[0].shape[0] >= rows and buf[0].shape[1] == cols and buf[0].dtype == dtype:
                return buf
            self._made -= 1  # too small (a larger batch came): replace it
