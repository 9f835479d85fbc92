"""Trajectory stores: a run directory of per-(epoch, sample) logits (full) or running sums (summary).

The contract (``DESIGN.md``, "Trajectory store"): :mod:`.identity` holds the files that say what
a store is (metadata, labels, ids, fingerprint), :mod:`.base` what both kinds share (writer
lock, epoch completion, generation, snapshot reads), :mod:`.full` and :mod:`.summary` their
own files.  Stores know nothing of scores: the summary store's folding
rule is handed to it by the scoring layer.
"""
from pathlib import Path

from ..fileio import read_json
from .base import RunDirStore
from .identity import DTYPES, META, RESERVED, StoreError, fingerprint, is_store_file
from .full import TrajectoryStore
from .summary import SummaryStore

STORE_KINDS = {"full": TrajectoryStore, "summary": SummaryStore}


def store_kind(run_dir) -> str:
    """``"full"`` or ``"summary"``, from ``run_dir/meta.json`` (:class:`StoreError` if unreadable)."""
    try:
        meta = read_json(Path(run_dir) / META, "store metadata meta.json")
    except ValueError as e:
        raise StoreError(str(e)) from None
    kind = meta.get("kind", "full") if isinstance(meta, dict) else None
    if kind not in STORE_KINDS:
        raise StoreError(f"{Path(run_dir) / META} is corrupt: unknown store kind {kind!r}")
    return kind


def open_store(run_dir, mode: str = "r", *, fold=None) -> RunDirStore:
    """Open the store in ``run_dir``, full or summary according to its ``meta.json``.

    ``fold`` is needed only to resume writing a summary store (``mode="a"``).
    """
    cls = STORE_KINDS[store_kind(run_dir)]
    return cls.open(run_dir, mode, fold=fold) if cls is SummaryStore else cls.open(run_dir, mode)


def open_or_create_store(kind: str, run_dir, labels, n_classes: int, *, fold=None, **create_kwargs) -> RunDirStore:
    """Resume the store of ``kind`` in ``run_dir`` for writing, or create it.

    ``create_kwargs`` are those of :meth:`RunDirStore.create`; ``fold`` is the summary
    store's (ignored for a full store).  An existing store of the other kind, or one made
    for other labels, sample ids, N or ``n_classes`` (:meth:`RunDirStore.check_identity`),
    raises :class:`StoreError`.
    """
    if kind not in STORE_KINDS:
        raise ValueError(f"unknown store kind {kind!r}; valid: {', '.join(STORE_KINDS)}")
    extra = {"fold": fold} if kind == "summary" else {}
    if (Path(run_dir) / META).exists():
        found = store_kind(run_dir)
        if found != kind:
            raise StoreError(f"{run_dir} holds a {found} store, but a {kind} store was asked for")
        store = STORE_KINDS[kind].open(run_dir, "a", **extra)
        try:
            store.check_identity(labels, n_classes, create_kwargs.get("sample_ids"))
        except BaseException:
            store.close()
            raise
        return store
    return STORE_KINDS[kind].create(run_dir, labels, n_classes, **extra, **create_kwargs)


__all__ = ["DTYPES", "META", "RESERVED", "STORE_KINDS", "RunDirStore", "StoreError", "SummaryStore",
           "TrajectoryStore", "fingerprint", "is_store_file", "open_or_create_store", "open_store", "store_kind"]
