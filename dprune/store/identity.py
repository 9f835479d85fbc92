"""The files that say what a store is: ``meta.json``, ``labels.npy`` and ``sample_ids.txt``.

Their names, the fingerprint of a training set, the checks of a store's metadata and of its
``.npy`` files, and the test of whether a reader's snapshot went stale (see :mod:`.base`).

Legend: N samples.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from ..fileio import TEXT_MAX_BYTES, load_npy, read_json, read_npy_header, read_text
from ..labels import validate_labels

FORMAT_VERSION = 1
DTYPES = {"float16": np.float16, "float32": np.float32}
META = "meta.json"
LABELS = "labels.npy"
SAMPLE_IDS = "sample_ids.txt"
# Names no other writer may use inside a store (``dprune prune -o``, ``--export-list``).
RESERVED = (META, LABELS, SAMPLE_IDS, ".dprune.lock")


class StoreError(ValueError):
    """A run directory that is missing, corrupt, truncated or used out of order."""


def fingerprint(labels_N: np.ndarray, sample_ids: Sequence[str]) -> dict:
    """Identity of a training set: its size and a SHA-256 of the ordered ids and labels.

    Two runs over the same samples in the same order with the same labels have the same
    fingerprint; a manifest is only applied to a dataset with a matching fingerprint.
    """
    labels_N = np.ascontiguousarray(labels_N, dtype="<i8")
    h = hashlib.sha256()
    h.update(str(len(labels_N)).encode())
    h.update(labels_N.tobytes())
    ids = list(sample_ids)
    for a in range(0, len(ids), 4096):  # the bytes of "id\n" per sample, hashed in blocks
        h.update("".join(f"{sid}\n" for sid in ids[a : a + 4096]).encode("utf-8"))
    return {"n_samples": int(len(labels_N)), "sha256": h.hexdigest()}


def is_store_file(path) -> bool:
    """True when writing ``path`` would overwrite a file that belongs to a store."""
    path = Path(path).resolve()
    if not (path.parent / META).exists():
        return False
    return path.name in RESERVED or path.name.startswith(("epoch_", "state_", "accum."))


def _int(meta: dict, key: str, path: Path, minimum: int = 0) -> int:
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise StoreError(f"{path} is corrupt: {key} must be an integer >= {minimum}, got {v!r}")
    return v



def read_identity(run_dir: Path, kind: str) -> tuple[dict, np.ndarray, list[str]]:
    """Read and check ``meta.json``, ``labels.npy`` and ``sample_ids.txt`` of a ``kind`` store.

    Returns ``(meta, labels int64 [N], sample ids)``; any problem raises :class:`StoreError`.
    """
    path = run_dir / META
    try:
        meta = read_json(path, "store metadata meta.json")
    except ValueError as e:
        raise StoreError(str(e)) from None
    if not isinstance(meta, dict):
        raise StoreError(f"{path} is corrupt: expected a JSON object")
    if meta.get("kind", "full") != kind:
        raise StoreError(f"{run_dir} holds a {meta.get('kind', 'full')} store, not a {kind} store")
    required = ("format_version", "n_samples", "n_classes", "dtype", "epochs_completed", "fingerprint",
                "store_id", "epoch_tokens")
    missing = [k for k in required if k not in meta]
    if missing:
        raise StoreError(f"{path} is corrupt: missing {', '.join(missing)}")
    if meta["format_version"] != FORMAT_VERSION:
        raise StoreError(f"{run_dir}: store format {meta['format_version']!r} is not supported "
                         f"(expected {FORMAT_VERSION})")
    if meta["dtype"] not in DTYPES:
        raise StoreError(f"{path}: unknown dtype {meta['dtype']!r}")
    n = _int(meta, "n_samples", path, 1)
    c = _int(meta, "n_classes", path, 2)
    e = _int(meta, "epochs_completed", path)
    _int(meta, "epochs_planned", path) if "epochs_planned" in meta else None
    tokens = meta["epoch_tokens"]
    if not isinstance(tokens, list) or len(tokens) != e or not all(isinstance(t, str) for t in tokens) \
            or not isinstance(meta["store_id"], str):
        raise StoreError(f"{path} is corrupt: epoch_tokens must list one token per complete epoch ({e})")
    fp = meta["fingerprint"]
    if not isinstance(fp, dict) or fp.get("n_samples") != n or not isinstance(fp.get("sha256"), str):
        raise StoreError(f"{path} is corrupt: bad fingerprint {fp!r}")
    try:
        labels_N = load_npy(run_dir / LABELS, "store labels", mmap=False)
        labels_N = validate_labels(labels_N, c, n)
    except (OSError, ValueError) as e:
        raise StoreError(f"{run_dir / LABELS} is missing or corrupt: {e}") from None
    try:
        # One relative path per sample: 256 bytes each on average is generous.
        ids_budget = max(TEXT_MAX_BYTES, 256 * n)
        sample_ids = read_text(run_dir / SAMPLE_IDS, "sample ids", ids_budget).split("\n")[:-1]
    except (OSError, ValueError) as e:
        raise StoreError(f"{run_dir / SAMPLE_IDS} is missing or corrupt: {e}") from None
    if len(sample_ids) != n:
        raise StoreError(f"{run_dir / SAMPLE_IDS} has {len(sample_ids)} ids, expected {n}")
    if fingerprint(labels_N, sample_ids) != fp:
        raise StoreError(f"{run_dir}: labels.npy / sample_ids.txt do not match the fingerprint in meta.json")
    return meta, labels_N, sample_ids


def generation_moved(run_dir: Path, meta: dict) -> bool:
    """True when an epoch of the snapshot ``meta`` was rolled back or re-recorded since it was read."""
    try:
        now = read_json(run_dir / META, "store metadata meta.json")
    except ValueError:
        return True
    tokens = meta.get("epoch_tokens", [])
    return (not isinstance(now, dict) or now.get("store_id") != meta.get("store_id")
            or now.get("epoch_tokens", [])[: len(tokens)] != tokens)


def check_npy(path: Path, shape: tuple, dtype: np.dtype, what: str) -> int:
    """Check an ``.npy`` file's header and size; return the offset of its data."""
    if not path.exists():
        raise StoreError(f"{what} but {path.name} is missing")
    try:
        with open(path, "rb") as f:
            got_shape, fortran, got_dtype = read_npy_header(f)
            offset = f.tell()
    except (OSError, ValueError, EOFError, SyntaxError) as e:
        raise StoreError(f"{path} has a corrupt header: {e}") from None
    if fortran:
        raise StoreError(f"{path}: Fortran-ordered arrays are not supported")
    if tuple(got_shape) != tuple(shape) or got_dtype != dtype:
        raise StoreError(f"{path}: expected {dtype} {tuple(shape)}, found {got_dtype} {tuple(got_shape)}")
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if size < need:
        raise StoreError(f"{path} is truncated: {size} bytes, expected {need}")
    return offset
