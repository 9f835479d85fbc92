"""Streaming readers: a full store's sample chunks, each turned into :class:`TrajectoryStats`.

On a CPU the kernel reads each observed row straight from the memory-mapped epoch files (no
intermediate copy) and each chunk's pages leave the process's memory once scored
(:func:`stream_stats_cpu`).  On a GPU a reader thread (:class:`ChunkReader`) fills pinned host
buffers that are copied on a second CUDA stream, so the copy of chunk i + 1 overlaps the
kernel on chunk i (:func:`stream_stats_gpu`).  Memory is bounded by the chunk size at any N.
"""
from __future__ import annotations

import queue
import threading

import numpy as np
import torch

# fp32-equivalent bytes of trajectory per chunk.  On a CPU the kernel reads the mapped files in
# place, so a chunk only sizes its outputs and the per-chunk scorers; a GPU needs large chunks so
# that the per-chunk scorers (small kernels) and the device-to-host copies are amortised.
CPU_CHUNK_BYTES = 256 << 20
GPU_CHUNK_BYTES = 512 << 20


def default_chunk_size(n_epochs: int, n_classes: int, budget_bytes: int = 64 << 20) -> int:
    """Samples per chunk so that one chunk's fp32 working set stays near ``budget_bytes``."""
    return max(1, budget_bytes // max(1, n_epochs * n_classes * 4))


def chunk_ranges(n_samples: int, chunk_size: int, only=None):
    """``(start, stop)`` of each chunk in order; with ``only`` (bool [N]), just the chunks
    holding a selected sample."""
    for start in range(0, n_samples, chunk_size):
        stop = min(start + chunk_size, n_samples)
        if only is None or only[start:stop].any():
            yield start, stop


def stream_stats_cpu(store, stats_fn, kw: dict, chunk_size: int, n_epochs: int, only=None):
    """Yield ``(start, stop, TrajectoryStats)`` of the first ``n_epochs`` epochs of a full store,
    the kernel reading the memory-mapped rows in place; each chunk's pages are released after.
    ``only``: see :func:`chunk_ranges`."""
    views = store.epoch_views(range(n_epochs))
    # The numba kernel writes the [n, C] rows it is asked for (the mean probabilities, the soft
    # labels) into reused buffers (consumed per chunk).
    rows = min(chunk_size, store.n_samples)
    buffers = {f"{f}_out": np.empty((rows, store.n_classes), np.float32)
               for f in ("p_avg", "p_soft") if kw.get(f"with_{f}") and "tier" in kw}
    for start, stop in chunk_ranges(store.n_samples, chunk_size, only):
        counts = np.stack([c[start:stop] for _, c in views])
        out = {k: v[: stop - start] for k, v in buffers.items()}
        st = stats_fn([z[start:stop] for z, _ in views], counts, store.labels[start:stop], **kw, **out)
        store.release(start, stop)
        yield start, stop, st


def stream_stats_gpu(store, stats_fn, chunk_size: int, n_epochs: int, only=None):
    """Yield ``(start, stop, TrajectoryStats)`` of the first ``n_epochs`` epochs of a full store on
    the GPU, reading ahead in a thread into pinned buffers copied on a second stream.
    ``only``: see :func:`chunk_ranges`."""
    device = torch.device("cuda", torch.cuda.current_device())
    # One buffer being read, one being copied and one whose copy is queued.
    with ChunkReader(store, chunk_size, n_epochs, n_buffers=3, pin=True, only=only) as reader:
        copy_stream = torch.cuda.Stream(device)
        pending = None
        for start, stop, logits, counts, release in reader:
            with torch.cuda.stream(copy_stream):
                chunk = tuple(torch.from_numpy(a).to(device, non_blocking=True)
                              for a in (logits, counts, store.labels[start:stop]))
                copied = torch.cuda.Event()
                copied.record(copy_stream)
            release(copied)  # the reader refills this host buffer once the copy is done
            if pending is not None:
                yield _stats_on_gpu(stats_fn, *pending)
            pending = (start, stop, chunk, copied)
        if pending is not None:
            yield _stats_on_gpu(stats_fn, *pending)


def _stats_on_gpu(stats_fn, start: int, stop: int, chunk: tuple, copied) -> tuple:
    compute = torch.cuda.current_stream(chunk[0].device)
    compute.wait_event(copied)
    for t in chunk:
        t.record_stream(compute)  # allocated on the copy stream, used on this one
    return start, stop, stats_fn(*chunk)


class ChunkReader:
    """Read a store's sample chunks into a ring of host buffers from a background thread.

    Iterating yields ``(start, stop, logits [E, n, C], counts [E, n], release)``; the
    logits view a ring buffer that is reused once ``release(event=None)`` is called (after
    ``event``, a CUDA event, has completed).  Memory: ``n_buffers`` chunks.
    """

    _DONE = object()

    def __init__(self, store, chunk_size: int, n_epochs: int, *, n_buffers: int, pin: bool, only=None):
        self._store = store
        self._chunk = chunk_size
        self._only = only
        self._epochs = range(n_epochs)
        E, N, C = n_epochs, store.n_samples, store.n_classes
        n = min(chunk_size, N)
        dtype = torch.from_numpy(np.empty(0, store.dtype)).dtype
        self._free: queue.Queue = queue.Queue()
        for _ in range(n_buffers):
            self._free.put((torch.empty(E * n * C, dtype=dtype, pin_memory=pin).numpy(), None))
        self._ready: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dprune-chunk-reader", daemon=True)

    def __enter__(self) -> "ChunkReader":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            for start, stop in chunk_ranges(self._store.n_samples, self._chunk, self._only):
                buf = self._take_free()
                if buf is None:
                    return
                logits, counts = self._store.read(start, stop, epochs=self._epochs, out=buf)
                self._store.release(start, stop)
                self._ready.put((start, stop, logits, counts, buf))
            self._ready.put(self._DONE)
        except BaseException as e:  # re-raised in the consuming thread
            self._ready.put(e)

    def _take_free(self):
        while not self._stop.is_set():
            try:
                buf, event = self._free.get(timeout=0.1)
            except queue.Empty:
                continue
            if event is not None:
                event.synchronize()
            return buf
        return None

    def __iter__(self):
        while True:
            item = self._ready.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            start, stop, logits, counts, buf = item
            yield start, stop, logits, counts, (lambda event=None, buf=buf: self._free.put((buf, event)))
