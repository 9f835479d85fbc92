"""Public scoring entry points and their validation: :func:`score_arrays` (in memory) and
:func:`score_store` (a store, streamed in sample chunks by :mod:`.streams`).

Both return plain numpy arrays [N]: one per requested scorer (higher = more important, NaN =
no score), the flags, and the detectors' outputs.  Saving and reusing them is
:mod:`.scores_file`.
"""
from __future__ import annotations

import functools
from typing import Iterable, Mapping

import numpy as np
import torch

from ..labels import validate_labels
from .backends import COLUMNS, backend_device, epochs_stats, implementation, resolve_backend
from .flags import compute_flags
from .params import merge_params
from .scorers import EPOCH_SCORERS, SCORERS
from .stats import TrajectoryStats, compute_stats
from .streams import CPU_CHUNK_BYTES, GPU_CHUNK_BYTES, default_chunk_size, stream_stats_cpu, stream_stats_gpu

METHODS = tuple(SCORERS)
# Methods asked for like scorers that give flags, not a ranking: "confident" is confident
# learning over the soft labels or the mean probabilities (:mod:`.confident`, its ``probs``
# parameter), one of selection's mislabel detectors.
FLAG_METHODS = ("confident",)
FLAG_METHOD_OUTPUTS = ("confident", "confident_label", "confident_relabel", "label_margin", "p_avg_label")
FLAGS = ("soft_argmax", "p_label", "p_max", "margin", "mislabel", "outlier", "nonfinite", "n_observed")
# Scorers that need only the soft label (the mean logits), not each epoch's softmax; and those
# that need each epoch's softmax only through the mean probabilities (the numba kernel's tiers).
# The confident detector is in the first group or the second by what it reads (``_detector_rows``).
SOFT_METHODS = {"entropy", "random"}
PROB_METHODS = SOFT_METHODS | {"entropy_prob"}
# The TrajectoryStats field [N, C] the confident detector reads, by its ``probs`` parameter.
DETECTOR_ROWS = {"soft_label": "p_soft", "mean_softmax": "p_avg"}


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
                       column: str = "reference") -> dict[str, np.ndarray]:
    """Scores and soft-label arrays of one chunk; the per-epoch scorers by the ``epoch_scores``
    kernel of the table's ``column`` (:mod:`.backends`)."""
    out = {}
    per_epoch = [m for m in methods if m in EPOCH_SCORERS]
    if per_epoch:
        out.update(implementation("epoch_scores", column)(
            st.logp_label, st.correct, st.logit_margin, st.el2n, st.tdds_div, (st.n_obs == 0) | st.nonfinite,
            methods=per_epoch, el2n_epoch=params["el2n"]["epoch"], tdds_window=params["tdds"]["window"],
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
    rows = _detector_rows(methods, params)
    if rows:
        valid = _detector_valid(out, rows)
        out.update(implementation("confident", "cpu")(getattr(st, rows).numpy(), y.numpy(), valid,
                                                      **_rule(params)))
    return compute_flags(out, y.numpy(), z.shape[2], params)


def _detector_rows(methods: list[str], params: dict) -> str | None:
    """The [N, C] field of TrajectoryStats the confident detector reads, or None when not asked for."""
    return DETECTOR_ROWS[params["confident"]["probs"]] if "confident" in methods else None


def _detector_valid(out: dict, rows: str) -> np.ndarray:
    """The samples the detector judges: observed, finite logits and, when it reads the soft
    label, a defined one (finite logits whose sum overflows float32 give a NaN soft label)."""
    valid = (out["n_observed"] > 0) & ~out["nonfinite"]
    return valid & np.isfinite(out["p_max"]) if rows == "p_soft" else valid


def _rule(params: dict) -> dict:
    """The confident detector's rule parameters (what it reads is chosen before it runs)."""
    return {k: v for k, v in params["confident"].items() if k != "probs"}


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
        softmax (``confident`` with its default ``probs="soft_label"`` reads those soft
        labels); adding ``entropy_prob`` or ``confident`` with ``probs="mean_softmax"`` folds
        each epoch's softmax into the mean probabilities; any other scorer needs the
        per-epoch statistics as well.
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
    params = merge_params(params)
    E, C = store.epochs_completed, store.n_classes
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
    rows = _detector_rows(methods, params)
    open_stream = functools.partial(_stream, store, backend_name, stats_fn, methods, rows, E, chunk_size)
    backend_name, stream = open_stream()
    # The same pass once more, over the chunks that hold rows the detector must read whole.
    out = _score_chunks(store, stream, lambda only: open_stream(only=only)[1], methods, params, COLUMNS[backend_name],
                        progress, rows)
    return compute_flags(out, store.labels, C, params, store.meta.get("threshold_samples")), backend_name


def _stream(store, backend_name: str, stats_fn, methods: list[str], rows: str | None, n_epochs: int,
            chunk_size: int | None, only=None):
    """``(backend that runs, iterator of (start, stop, TrajectoryStats))`` over the store's first
    ``n_epochs`` epochs: its summary, or a pass of the backend's kernel (:mod:`.streams`);
    ``rows``: the [N, C] field the detector reads (``p_soft``, ``p_avg`` or None); ``only``
    (bool [N]): just the chunks that hold a selected sample."""
    C = store.n_classes
    kw = {"with_p_avg": rows == "p_avg", "with_p_soft": rows == "p_soft"}
    if store.KIND == "summary":
        from .online import summary_stats

        return "summary", summary_stats(store, chunk_size or default_chunk_size(n_epochs, C), only)
    if backend_device(backend_name).type == "cuda":
        stats_fn = functools.partial(stats_fn, **kw)
        chunk_size = chunk_size or default_chunk_size(n_epochs, C, GPU_CHUNK_BYTES)
        return backend_name, stream_stats_gpu(store, stats_fn, chunk_size, n_epochs, only)
    if backend_name == "numba":  # the CPU kernel computes only what the methods read
        need = set(methods) - {"confident"}
        kw["tier"] = ("soft" if need <= SOFT_METHODS and rows != "p_avg" else
                      "probs" if need <= PROB_METHODS else "all")
    chunk_size = chunk_size or default_chunk_size(n_epochs, C, CPU_CHUNK_BYTES)
    return backend_name, stream_stats_cpu(store, epochs_stats(backend_name, stats_fn), kw, chunk_size, n_epochs,
                                             only)


def _score_chunks(store, stream, again, methods: list[str], params: dict, column: str, progress: bool,
                  rows: str | None) -> dict:
    """The scores of every chunk of ``stream``, concatenated, and the outputs of the detector
    reading the field ``rows`` (None: no detector); ``again(only)`` streams the same chunks anew
    (those holding a sample of the mask ``only``; all for None), for the rows the detector must
    read whole (:class:`.confident.ConfidentSpill`)."""
    from .confident import ConfidentSpill  # numba: loaded only when scoring runs

    N, C = store.n_samples, store.n_classes
    parts: dict[str, list[np.ndarray]] = {}
    # The detector's first pass rides on this one; it keeps each row's most probable classes.
    spill = ConfidentSpill(store.labels, C, store.run_dir) if rows else None
    # Threshold samples (in a fake class while recorded) are not judged: they neither count in the
    # joint nor in a rate's share.
    judged = np.ones(N, bool)
    judged[np.asarray((store.meta.get("threshold_samples") or {}).get("indices", []), np.int64)] = False
    bar = _progress(N, "scoring", progress)
    try:
        for start, stop, st in stream:
            chunk = _scores_from_stats(st, methods, params, start, N, column=column)
            for k, v in chunk.items():
                parts.setdefault(k, []).append(v)
            if spill is not None:
                spill.add(start, getattr(st, rows).cpu().numpy(), _detector_valid(chunk, rows) & judged[start:stop])
            bar.update(stop - start)
        bar.close()
        out = {k: np.concatenate(v) for k, v in parts.items()}
        if spill is not None:
            def rows_again(only):
                return ((a, b, getattr(st, rows).cpu().numpy()) for a, b, st in again(only))

            out.update(spill.finish(rows_again, **_rule(params)))
    finally:
        if spill is not None:
            spill.close()
    return out


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="samples", disable=not enabled, mininterval=0.5)
