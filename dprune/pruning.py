"""Store -> current scores -> selection -> manifest: the one composition every caller uses.

``dprune prune``, ``dprune train --prune-at`` (inside the training run), ``dprune run`` and the
benchmarks all prune a store through :func:`prune_store`, so scores are reused by the same
currency rule (:func:`dprune.scoring.scores_status`) and manifests record the same things.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .manifest import Manifest, load_manifest, write_manifest
from .scoring import load_or_score
from .select import PruneSpec, Selection, select
from .rundir import check_output_path


@dataclass
class Pruned:
    """What :func:`prune_store` did."""

    manifest: Manifest
    selection: Selection
    scores: dict[str, np.ndarray]
    scores_meta: dict
    scored_with: str | None
    """The backend that computed the scores, or None when ``scores.npz`` was current and reused."""


def prune_store(store, spec: PruneSpec, out_path, *, params=None, first_epochs: int | None = None,
                backend: str = "auto", progress: bool = False, extra: dict | None = None) -> Pruned:
    """Score ``store`` (reusing a current ``scores.npz``), select by ``spec``, write the manifest.

    Parameters
    ----------
    store : an open store
    spec : PruneSpec
    out_path : path of ``manifest.json`` (``.npz`` beside it)
    params : scorer/flag parameters (see :mod:`dprune.scoring.params`)
    first_epochs : score only the first K completed epochs
    extra : entries added to the manifest JSON (e.g. the training phase that made it)
    """
    out_path = check_output_path(out_path, "manifest", run_files=False)
    scores, meta, ran = load_or_score(store, methods=spec.methods_needed(), params=params, first_epochs=first_epochs,
                                      backend=backend, progress=progress)
    sel = select(scores, store.labels, store.n_classes, spec)
    _, n_classes, fp = store.data_labels()
    write_manifest(out_path, sel, source_run=str(Path(store.run_dir).resolve()), made_from=store.identity(first_epochs),
                   n_classes=n_classes, fingerprint=fp, scores_meta=meta, extra=extra)
    return Pruned(load_store_manifest(out_path, store), sel, scores, meta, ran)


def load_store_manifest(path, store) -> Manifest:
    """Load a manifest made from ``store``'s dataset (refused otherwise), with its final labels."""
    labels, _, fp = store.data_labels()
    return load_manifest(path, fingerprint=fp, labels_N=labels)
