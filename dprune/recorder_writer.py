"""The recorder's background writer: queued batches applied to the store on a thread of its own.

The training thread copies each batch to host memory (pinned and asynchronous for GPU tensors) and
queues it; the queue is bounded, so a store that falls behind makes ``put`` wait instead of growing
memory.  An error on the writer thread is raised on the training thread by the next ``put`` or
``flush`` (see :mod:`dprune.recorder`).

Legend: B batch, C classes.
"""
from __future__ import annotations

import queue
import threading

import torch


class RecorderError(RuntimeError):
    """The background writer failed; the message names the cause."""


class Writer:
    """Applies queued batches to the store on a thread of its own (see the module docstring)."""

    _FLUSH = object()
    _STOP = object()

    def __init__(self, write, queue_size: int):
        self.write = write  # write(epoch, indices, logits)
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._flushed = threading.Event()
        self._pool = HostBuffers(queue_size + 2)
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
                    self.write(epoch, idx, z)
            except BaseException as e:  # surfaced on the training thread
                self.error = e
            finally:
                release()


class HostBuffers:
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
