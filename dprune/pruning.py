"""Store -> current scores -> selection -> manifest: the one composition every caller uses.

``dprune prune``, ``dprune train --prune-at`` (inside the training run, through
:class:`PruneInRun`, the trainer's end-of-epoch hook), ``dprune run`` and the benchmarks all
prune a store through :func:`prune_store`, so scores are reused by the same currency rule
(:func:`dprune.scoring.scores_status`) and manifests record the same things.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np

from .manifest import Manifest, decisions_digest, load_manifest, npz_is_current, rewrite_npz, write_manifest
from .rundir import check_output_path
from .scoring import load_or_score, merge_params
from .select import PruneSpec, Selection, select
from .threshold import data_labels


@dataclass
class Pruned:
    """What :func:`prune_store` did."""

    selection: Selection
    scores: dict[str, np.ndarray]
    scores_meta: dict
    scored_with: str | None
    """The backend that computed the scores, or None when ``scores.npz`` was current and reused."""
    digest: str
    """The written manifest's identity (:attr:`Manifest.digest`), from the write."""
    path: Path
    store: object

    @cached_property
    def manifest(self) -> Manifest:
        """The manifest as written, read back and validated (on first use)."""
        return load_store_manifest(self.path, self.store)


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
    _, n_classes, fp = data_labels(store)
    written = write_manifest(out_path, sel, source_run=str(Path(store.run_dir).resolve()),
                             made_from=store.identity(first_epochs), n_classes=n_classes, fingerprint=fp,
                             scores_meta=meta, extra=extra)
    return Pruned(sel, scores, meta, ran, decisions_digest(written), Path(out_path), store)


def load_store_manifest(path, store) -> Manifest:
    """Load a manifest made from ``store``'s dataset (refused otherwise), with its final labels."""
    labels, _, fp = data_labels(store)
    return load_manifest(path, fingerprint=fp, labels_N=labels)


@dataclass(frozen=True)
class PruneInRun:
    """The trainer's end-of-epoch hook for prune-in-run (``dprune train --prune-at T``).

    After epoch ``at_epoch`` (T) is recorded, rank 0 calls it with the run's store: it scores
    the first T epochs, selects by ``spec`` and writes the manifest, or reuses one already
    written for these T epochs with this selection (a run killed after writing it).
    ``params``: the scoring parameters the selection reads its scores with (e.g.
    ``{"confident": {"rate": 0.2}}``; none: the defaults).
    """

    spec: PruneSpec
    at_epoch: int
    params: dict = field(default_factory=dict)

    def identity(self) -> dict:
        """What a checkpoint records of the hook, and a resumed run must match."""
        out = {"at_epoch": self.at_epoch, "selection": self.spec.to_dict()}
        return {**out, "params": self.params} if self.params else out

    def __call__(self, store, path: Path, log: Callable[[str], None]) -> str:
        """Write (or reuse) the manifest at ``path``; return its digest."""
        T, spec = self.at_epoch, self.spec
        if path.exists():
            try:
                m = load_store_manifest(path, store)
                # (a manifest made before a parameter existed has its default)
                if (m.data.get("made_from") == store.identity(T) and m.data.get("selection") == spec.to_dict()
                        and merge_params((m.data.get("scores") or {}).get("params")) == merge_params(self.params)):
                    log(f"reusing {path} (made at epoch {T} before the run was interrupted)")
                    if not npz_is_current(path):  # killed between the JSON and the npz
                        rewrite_npz(m, path)
                    return m.digest
            except ValueError:
                pass
        t0 = time.perf_counter()
        done = prune_store(store, spec, path, params=self.params, first_epochs=T,
                           extra={"pruned_in_run": {"at_epoch": T}})
        sel = done.selection
        log(f"pruned at epoch {T}: kept {len(sel.kept)} of {len(sel.labels_final)} samples (pruned "
            f"{len(sel.pruned)} by {spec.method}, removed {len(sel.outlier_index)}, relabelled "
            f"{len(sel.relabel_index)}) in {time.perf_counter() - t0:.1f}s -> {path}")
        return done.digest
