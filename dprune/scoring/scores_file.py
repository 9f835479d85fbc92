"""The scores file, ``scores.npz``: save, load, and whether it is current.

It holds one float32 array [N] per scorer (higher = more important, NaN = no score), the flags
and per-sample soft-label arrays, and a ``__meta__`` JSON entry: what the scores were made from
(the store's fingerprint, generation and epochs), the methods and the full parameters.
:func:`scores_status` is the one rule that says whether a scores file is still current for a
store; :func:`load_or_score` reuses a current file or rescores.
"""
from __future__ import annotations

import errno
import json
import time
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..fileio import atomic_savez, parse_json, read_npz
from .api import FLAG_METHODS, FLAGS, METHODS, check_methods, score_store
from .params import merge_params
from .scorers import clipped_windows

SCORES_FORMAT = 2
SCORES_FILE = "scores.npz"


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
