"""Public scoring entry points: validation, chunked streaming, and the ``scores.npz`` file.

``scores.npz`` holds one float32 array [N] per scorer (higher = more important, NaN = no
score), the flags and per-sample soft-label arrays, and a ``__meta__`` JSON entry: what the
scores were made from (the store's fingerprint, generation and epochs), the methods and the
full parameters.  :func:`scores_status` is the one rule that says whether a scores file is
still current for a store; :func:`load_or_score` reuses a current file or rescores.
"""
from __future__ import annotations

import errno
import functools
import json
import queue
import threading
import time
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch

from ..fileio import atomic_savez, parse_json, read_npz
from ..labels import validate_labels
from .backends import backend_device, epochs_stats, resolve_backend
from .flags import compute_flags
from .params import merge_params
from .scorers import SCORERS, clipped_windows
from .stats import TrajectoryStats, compute_stats

METHODS = tuple(SCORERS)
# Methods asked for like scorers that give flags, not a ranking: "confident" is confident
# learning over the mean probabilities (:mod:`.confident`), one of selection's mislabel detectors.
FLAG_METHODS = ("confident",)
FLAG_METHOD_OUTPUTS = ("confident", "confident_label", "confident_relabel", "label_margin", "p_avg_label")
FLAGS = ("soft_argmax", "p_label", "p_max", "margin", "mislabel", "outlier", "nonfinite", "n_observed")
SCORES_FORMAT = 2
SCORES_FILE = "scores.npz"


def check_methods(methods: Iterable[str] | str | None) -> list[str]:
    """Validate scorer and detector names; ``None`` or ``"all"`` means every one."""
    if methods is None or methods == "all":
        return list(METHODS + FLAG_METHODS)
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in METHODS + FLAG_METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown scoring method {', '.join(unknown) or '(none)'}; valid: "
                         f"{', '.join(METHODS + FLAG_METHODS)}")
    return methods


def _validate_arrays(logits_ENC, counts_EN, labels_N):
    z = torch.as_tensor(logits_ENC)
    if z.ndim != 3:
        raise ValueError(f"logits must be [E, N, C], got shape {tuple(z.shape)}")
    if not z.is_floating_point():
        raise ValueError(f"logits must be floating point, got {z.dtype}")
    E, N, C = z.shape
    if E < 1 or N < 1 or C < 1:
        raise ValueError(f"logits must have E, N, C >= 1, got shape {tuple(z.shape)}")
    c = torch.ones(E, N, dtype=torch.int32) if counts_EN is None else torch.as_tensor(counts_EN)
    if tuple(c.shape) != (E, N):
        raise ValueError(f"counts must be [E, N] = [{E}, {N}], got shape {tuple(c.shape)}")
    if c.is_floating_point() or (c < 0).any():
        raise ValueError("counts must be non-negative integers")
    y = labels_N.cpu().numpy() if isinstance(labels_N, torch.Tensor) else labels_N
    y = torch.from_numpy(validate_labels(y, C, N))
    return z, c.to(torch.int32), y


def _scores_from_stats(st: TrajectoryStats, methods: list[str], params: dict, offset: int, n_total: int, *,
                       cpu_kernel: bool = False) -> dict[str, np.ndarray]:
    """Scores and soft-label arrays of one chunk; ``cpu_kernel``: the per-epoch scorers by the
    numba kernel (:mod:`dprune.kernels.epoch_scores_cpu`) instead of the torch reference."""
    out = {}
    if cpu_kernel:
        from dprune.kernels.epoch_scores_cpu import NAMES, epoch_scores_cpu

        per_epoch = [m for m in methods if m in NAMES]
        if per_epoch:
            out.update(epoch_scores_cpu(
                st.logp_label.numpy(), st.correct.numpy(), st.logit_margin.numpy(), st.el2n.numpy(),
                st.tdds_div.numpy(), ((st.n_obs == 0) | st.nonfinite).numpy(), methods=per_epoch,
                el2n_epoch=params["el2n"]["epoch"], tdds_window=params["tdds"]["window"],
                tdds_decay=params["tdds"]["decay"], dyn_unc_window=params["dyn_unc"]["window"],
                dual_window=params["dual"]["window"]))
    for m in methods:
        if m in FLAG_METHODS or m in out:
            continue
        kw = dict(params.get(m, {}))
        if m == "random":
            kw.update(offset=offset, n_total=n_total)
        out[m] = SCORERS[m](st, **kw).cpu().numpy().astype(np.float32)
    valid = (st.n_obs > 0) & ~st.nonfinite
    nan = torch.tensor(float("nan"), device=st.p_max.device)
    soft_argmax = torch.where(valid, st.soft_argmax, torch.full_like(st.soft_argmax, -1))
    out["soft_argmax"] = soft_argmax.cpu().numpy().astype(np.int64)
    out["p_label"] = torch.where(valid, st.p_label, nan).cpu().numpy().astype(np.float32)
    out["p_max"] = torch.where(valid, st.p_max, nan).cpu().numpy().astype(np.float32)
    out["margin"] = torch.where(valid, st.p_max - st.p_second, nan).cpu().numpy().astype(np.float32)
    out["entropy_raw"] = torch.where(valid, st.entropy, nan).cpu().numpy().astype(np.float32)
    out["nonfinite"] = st.nonfinite.cpu().numpy()
    out["n_observed"] = st.n_obs.cpu().numpy().astype(np.int32)
    return out


def score_arrays(
    logits_ENC,
    counts_EN,
    labels_N,
    *,
    methods: Iterable[str] | str | None = None,
    params: Mapping[str, Mapping] | None = None,
) -> dict[str, np.ndarray]:
    """Score an in-memory trajectory.

    Parameters
    ----------
    logits_ENC : array or tensor [E, N, C], float
        Logits per epoch and sample (the mean of that epoch's observations).
    counts_EN : array [E, N] of non-negative ints, or None
        Observations per epoch and sample; 0 = not observed.  ``None`` = every sample once.
    labels_N : array [N] of ints in [0, C)
        The given labels.
    methods : list of str, comma-separated str, "all" or None
        Scorers to compute (default: all of :data:`METHODS`).
    params : dict, optional
        Per-scorer/flag keyword overrides, e.g. ``{"tdds": {"window": 5}}``; see
        :data:`dprune.scoring.params.DEFAULT_PARAMS`.

    Returns
    -------
    dict of numpy arrays [N]: one float32 per scorer, plus :data:`FLAGS`.
    """
    methods = check_methods(methods)
    params = merge_params(params)
    z, c, y = _validate_arrays(logits_ENC, counts_EN, labels_N)
    st = compute_stats(z, c, y)
    out = _scores_from_stats(st, methods, params, 0, z.shape[1])
    if "confident" in methods:
        _detect(out, st.p_avg.numpy(), y.numpy(), params)
    return compute_flags(out, y.numpy(), z.shape[2], params)


def _detect(out: dict, p_avg_NC, labels_N: np.ndarray, params: dict) -> None:
    from .confident import confident_learning

    valid = (out["n_observed"] > 0) & ~out["nonfinite"]
    out.update(confident_learning(p_avg_NC, labels_N, valid, **params["confident"]))


def default_chunk_size(n_epochs: int, n_classes: int, budget_bytes: int = 64 << 20) -> int:
    """Samples per chunk so that one chunk's fp32 working set stays near ``budget_bytes``."""
    return max(1, budget_bytes // max(1, n_epochs * n_classes * 4))


def score_store(
    store,
    *,
    methods: Iterable[str] | str | None = None,
    params: Mapping[str, Mapping] | None = None,
    chunk_size: int | None = None,
    backend: str = "auto",
    progress: bool = False,
    first_epochs: int | None = None,
) -> tuple[dict[str, np.ndarray], str]:
    """Score a store chunk by chunk, in memory bounded by the chunk size.

    Parameters
    ----------
    store : TrajectoryStore or SummaryStore
        A :class:`~dprune.store.TrajectoryStore` is read once, ``chunk_size`` samples at a
        time.  On a CPU the kernel reads each observed row straight from the memory-mapped
        epoch files (no intermediate copy) and the chunk's pages leave the process's memory
        once scored, so memory stays bounded by the chunk at any N.  On a GPU a reader thread
        fills pinned host buffers that are copied on a second CUDA stream, so the copy of
        chunk i + 1 overlaps the kernel on chunk i.  A :class:`~dprune.store.SummaryStore`
        already holds the statistics accumulated during training and is scored without a
        trajectory pass.  On a CPU the kernel computes only what the methods read: for
        ``entropy`` (and ``random``) a sum of each sample's rows and one softmax, no per-epoch
        softmax; adding ``entropy_prob`` or ``confident`` folds each epoch's softmax into the
        mean probabilities; any other scorer needs the per-epoch statistics as well.
    methods, params
        As for :func:`score_arrays`.
    chunk_size : int, optional
        Samples per chunk (default: :func:`default_chunk_size`, larger on a GPU).
    backend : str
        One of :data:`dprune.scoring.backends.BACKENDS`; validated for either kind of store.
    progress : bool
        Show a progress bar.
    first_epochs : int, optional
        Score only epochs ``0 .. first_epochs - 1``, as if the run had stopped there: the
        paper's trajectory is the first epochs of the real training schedule (12 of 120),
        so a run recorded to the end can be scored at any shorter length.  Full stores only.

    Returns
    -------
    (scores, backend) : the same dict as :func:`score_arrays`, and the name of the backend
    that ran (``"summary"`` for a summary store).  Uses every completed epoch by default.
    """
    backend_name, stats_fn = resolve_backend(backend)
    methods = check_methods(methods)
    want_p_avg = "confident" in methods
    tier = "soft" if set(methods) <= SOFT_METHODS else "probs" if set(methods) <= PROB_METHODS else "all"
    params = merge_params(params)
    E, N, C = store.epochs_completed, store.n_samples, store.n_classes
    if E == 0:
        raise ValueError(f"{store.run_dir} has no complete epoch to score")
    summary = store.KIND == "summary"
    if first_epochs is not None:
        if summary and first_epochs != E:
            raise ValueError(f"first_epochs={first_epochs} needs a full store: a summary store keeps only running "
                             f"totals of its {E} epochs (record only the first {first_epochs} with record_epochs)")
        if not 1 <= first_epochs <= E:
            raise ValueError(f"first_epochs must be in [1, {E}] (the completed epochs), got {first_epochs}")
        E = first_epochs
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if summary:
        from .online import summary_stats

        stream = summary_stats(store, chunk_size or default_chunk_size(E, C))
        backend_name = "summary"
    elif backend_device(backend_name).type == "cuda":
        stats_fn = functools.partial(stats_fn, with_p_avg=want_p_avg)
        stream = _stream_stats_gpu(store, stats_fn, chunk_size or default_chunk_size(E, C, _GPU_CHUNK_BYTES), E)
    else:
        kw = {"with_p_avg": want_p_avg, "tier": tier} if backend_name == "numba" else {"with_p_avg": want_p_avg}
        stream = _stream_stats_cpu(store, epochs_stats(backend_name, stats_fn), kw,
                                   chunk_size or default_chunk_size(E, C, _CPU_CHUNK_BYTES), E)
    parts: dict[str, list[np.ndarray]] = {}
    from .confident import ConfidentSpill  # numba: loaded only when scoring runs

    # The detector's first pass rides on this one; p-bar goes to a file for its other two.
    spill = ConfidentSpill(store.labels, C, store.run_dir) if want_p_avg else None
    cpu_kernel = backend_name in ("numba", "summary")
    bar = _progress(N, "scoring", progress)
    try:
        for start, stop, st in stream:
            chunk = _scores_from_stats(st, methods, params, start, N, cpu_kernel=cpu_kernel)
            for k, v in chunk.items():
                parts.setdefault(k, []).append(v)
            if spill is not None:
                spill.add(start, st.p_avg.cpu().numpy(), (chunk["n_observed"] > 0) & ~chunk["nonfinite"])
            bar.update(stop - start)
        bar.close()
        out = {k: np.concatenate(v) for k, v in parts.items()}
        if spill is not None:
            out.update(spill.finish(**params["confident"]))
    finally:
        if spill is not None:
            spill.close()
    return compute_flags(out, store.labels, C, params, store.meta.get("threshold_samples")), backend_name


# fp32-equivalent bytes of trajectory per chunk.  On a CPU the kernel reads the mapped files in
# place, so a chunk only sizes its outputs and the per-chunk scorers; a GPU needs large chunks so
# that the per-chunk scorers (small kernels) and the device-to-host copies are amortised.
_CPU_CHUNK_BYTES = 256 << 20
_GPU_CHUNK_BYTES = 512 << 20
# Scorers that need only the soft label (the mean logits), not each epoch's softmax; and those
# that need each epoch's softmax only through the mean probabilities (the numba kernel's tiers).
SOFT_METHODS = {"entropy", "random"}
PROB_METHODS = SOFT_METHODS | {"entropy_prob", "confident"}


def _stream_stats_cpu(store, stats_fn, kw: dict, chunk_size: int, n_epochs: int):
    """Yield ``(start, stop, TrajectoryStats)`` of the first ``n_epochs`` epochs of a full store,
    the kernel reading the memory-mapped rows in place; each chunk's pages are released after."""
    views = store.epoch_views(range(n_epochs))
    # The numba kernel writes the mean probabilities into one reused buffer (consumed per chunk).
    p_avg = np.empty((min(chunk_size, store.n_samples), store.n_classes), np.float32) \
        if kw.get("with_p_avg") and "tier" in kw else None
    for start in range(0, store.n_samples, chunk_size):
        stop = min(start + chunk_size, store.n_samples)
        counts = np.stack([c[start:stop] for _, c in views])
        out = {} if p_avg is None else {"p_avg_out": p_avg[: stop - start]}
        st = stats_fn([z[start:stop] for z, _ in views], counts, store.labels[start:stop], **kw, **out)
        store.release(start, stop)
        yield start, stop, st


def _stream_stats_gpu(store, stats_fn, chunk_size: int, n_epochs: int):
    """Yield ``(start, stop, TrajectoryStats)`` of the first ``n_epochs`` epochs of a full store on
    the GPU, reading ahead in a thread into pinned buffers copied on a second stream."""
    device = torch.device("cuda", torch.cuda.current_device())
    # One buffer being read, one being copied and one whose copy is queued.
    with _ChunkReader(store, chunk_size, n_epochs, n_buffers=3, pin=True) as reader:
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


class _ChunkReader:
    """Read a store's sample chunks into a ring of host buffers from a background thread.

    Iterating yields ``(start, stop, logits [E, n, C], counts [E, n], release)``; the
    logits view a ring buffer that is reused once ``release(event=None)`` is called (after
    ``event``, a CUDA event, has completed).  Memory: ``n_buffers`` chunks.
    """

    _DONE = object()

    def __init__(self, store, chunk_size: int, n_epochs: int, *, n_buffers: int, pin: bool):
        self._store = store
        self._chunk = chunk_size
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

    def __enter__(self) -> "_ChunkReader":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            N = self._store.n_samples
            for start in range(0, N, self._chunk):
                stop = min(start + self._chunk, N)
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


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="samples", disable=not enabled, mininterval=0.5)


def save_scores(path, scores: Mapping[str, np.ndarray], *, made_from: dict, methods, params) -> dict:
    """Write ``scores.npz`` atomically; its ``__meta__`` entry says what it was made from.

    ``made_from`` is the store's :meth:`~dprune.store.RunDirStore.identity` for the epochs
    scored.  Returns the metadata written (``path=None``: only returns it).
    """
    params = merge_params(params)
    methods = list(methods)
    meta = {
        "format_version": SCORES_FORMAT,
        "made_from": made_from,
        "methods": methods,
        "params": params,
        "clipped": clipped_windows(methods, params, made_from["epochs"]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if path is not None:
        arrays = {k: np.asarray(v) for k, v in scores.items()}
        arrays["__meta__"] = np.array(json.dumps(meta))
        atomic_savez(Path(path), arrays)
    return meta


_KINDS = {"soft_argmax": "i", "n_observed": "i", "nonfinite": "b", "mislabel": "b", "outlier": "b",
          "confident": "b", "confident_relabel": "b", "confident_label": "i", "threshold_sample": "b",
          "threshold_label": "i", "aum_mislabel": "b"}


def load_scores(path, *, n_samples: int | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Read ``scores.npz``: ``(arrays, meta)``; every entry is checked before it is loaded.

    With ``n_samples``, each array must be [N] (float, or the integer / boolean flags); a
    file that claims other shapes is refused without reading its data.
    """
    expect = None
    default = None
    if n_samples is not None:
        expect = {"__meta__": ((), "U")}
        expect.update({k: ((n_samples,), kind) for k, kind in _KINDS.items()})
        default = ((n_samples,), "f")
    arrays = read_npz(Path(path), "scores file", expect, default)
    if "__meta__" not in arrays:
        raise ValueError(f"{path} is not a dprune scores file (no __meta__ entry)")
    meta = parse_json(str(arrays.pop("__meta__")), "scores file", f"{path}, entry __meta__")
    if not isinstance(meta, dict) or not isinstance(meta.get("made_from"), dict) \
            or not isinstance(meta.get("methods"), list) or not isinstance(meta.get("params"), dict):
        raise ValueError(f"{path}: __meta__ is not a dprune scores description (format {SCORES_FORMAT})")
    missing = [f for f in FLAGS if f not in arrays]
    missing += [m for m in meta["methods"] if m not in arrays]
    if missing:
        raise ValueError(f"{path} is incomplete: missing {', '.join(missing)}")
    return arrays, meta


def scores_status(meta: dict, made_from: dict, methods: Iterable[str], params) -> str | None:
    """``None`` when scores with ``meta`` are current for ``made_from`` (a store identity),
    ``methods`` and ``params``; else the reason they are not."""
    got = meta.get("made_from", {})
    if got.get("fingerprint") != made_from["fingerprint"]:
        return "they were computed for a different dataset (fingerprint)"
    if got.get("generation") != made_from["generation"]:
        return "the trajectory was re-recorded or rolled back since (generation)"
    if got.get("epochs") != made_from["epochs"]:
        return f"they used {got.get('epochs')} epochs, not {made_from['epochs']}"
    missing = [m for m in methods if m not in meta.get("methods", [])]
    if missing:
        return f"they lack {', '.join(missing)}"
    if meta.get("params") != merge_params(params):
        return "they were made with other parameters"
    return None


def load_or_score(store, *, methods, params=None, first_epochs: int | None = None, backend: str = "auto",
                  chunk_size: int | None = None, progress: bool = False, path=None
                  ) -> tuple[dict[str, np.ndarray], dict, str | None]:
    """The scores of ``store`` for ``methods`` and ``params``: reused from ``path`` (default
    ``RUN_DIR/scores.npz``) when current, else computed and saved there.

    Returns ``(scores, meta, ran)``: ``ran`` is the backend that computed them, ``None`` when
    the file was reused.  Computing writes the union of the file's methods and ``methods``
    only when the rest of the file is still current; otherwise just ``methods``.
    """
    methods = check_methods(methods)
    params = merge_params(params)
    path = Path(path) if path is not None else Path(store.run_dir) / SCORES_FILE
    made_from = store.identity(first_epochs)
    keep: list[str] = []
    if path.exists():  # reuse, or keep the file's methods when only methods are missing
        try:
            scores, meta = load_scores(path, n_samples=store.n_samples)
        except ValueError:
            scores, meta = {}, {}
        if meta and scores_status(meta, made_from, methods, params) is None:
            return scores, meta, None
        if meta and scores_status(meta, made_from, [], params) is None:
            keep = [m for m in meta["methods"] if m in METHODS + FLAG_METHODS]
    all_methods = list(dict.fromkeys(keep + methods))
    scores, ran = score_store(store, methods=all_methods, params=params, backend=backend, chunk_size=chunk_size,
                              progress=progress, first_epochs=first_epochs)
    try:
        meta = save_scores(path, scores, made_from=made_from, methods=all_methods, params=params)
    except OSError as e:  # a store the user may read but not write: score without caching, and say so
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        meta = save_scores(None, scores, made_from=made_from, methods=all_methods, params=params)
        ran = f"{ran}; not cached: {path.parent} is not writable"
    return scores, meta, ran
