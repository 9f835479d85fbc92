"""Import trajectories recorded by other tools into a :class:`~dprune.store.TrajectoryStore`.

Two sources:

* arrays: ``logits [E, N, C]`` with optional ``counts [E, N]`` and ``labels [N]``, from one
  ``.npz`` or from ``.npy`` files (``logits.npy``, ``counts.npy``, ``labels.npy`` in a
  folder; ``.npy`` files are memory-mapped, so they may be larger than RAM);
* TDDS / DUAL dynamics folders: per epoch ``{e}_Output.npy`` ([n_e, C] logits in the
  shuffled order the loader produced) and ``{e}_Index.npy`` ([n_e] dataset indices), as
  written by the TDDS (CVPR 2024) and DUAL training scripts.  Repeated indices are averaged,
  missing ones are unobserved.
"""
from __future__ import annotations

import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .labels import validate_labels
from .store import TrajectoryStore


def _progress(total, desc, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="epoch", disable=not enabled, leave=False)


def _load_array(path: Path, mmap: bool = True) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


@contextmanager
def _removed_on_failure(out_dir):
    """Delete ``out_dir`` if the import fails and the folder did not exist before it."""
    out_dir = Path(out_dir)
    existed = out_dir.exists()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def read_labels_file(path) -> np.ndarray:
    """labels [N] from an ``.npy`` file (no pickles), as a ``ValueError`` naming the file if unreadable."""
    return _load_array(Path(path), mmap=False)


def _check_logits(logits: np.ndarray, where) -> None:
    if logits.ndim != 3:
        raise ValueError(f"{where}: logits must be [E, N, C], got shape {logits.shape}")
    if not np.issubdtype(logits.dtype, np.floating):
        raise ValueError(f"{where}: logits must be floating point, got dtype {logits.dtype}")


def read_array_source(src: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``(logits [E, N, C], counts [E, N] or None, labels [N] or None)`` from an npz, npy or folder."""
    src = Path(src)
    if src.is_dir():
        files = {name: src / f"{name}.npy" for name in ("logits", "counts", "labels")}
        if not files["logits"].exists():
            raise ValueError(f"{src} has no logits.npy")
        return tuple(_load_array(p) if p.exists() else None for p in files.values())  # type: ignore[return-value]
    if src.suffix == ".npy":
        return _load_array(src), None, None
    if src.suffix == ".npz":
        try:
            z = np.load(src, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(f"cannot read {src}: {e}") from None
        if "logits" not in z.files:
            raise ValueError(f"{src} has no 'logits' array (found: {', '.join(z.files) or 'nothing'})")
        return z["logits"], (z["counts"] if "counts" in z.files else None), (z["labels"] if "labels" in z.files else None)
    if not src.exists():
        raise ValueError(f"not found: {src}")
    raise ValueError(f"{src}: expected a .npz, a .npy or a folder of .npy files")


def import_arrays(src, out_dir, *, labels=None, n_classes: int | None = None, dtype: str = "float16",
                  sample_ids=None, chunk_size: int = 65536, progress: bool = False, overwrite: bool = False) -> TrajectoryStore:
    """Create a store in ``out_dir`` from an array source (see :func:`read_array_source`)."""
    logits, counts, file_labels = read_array_source(Path(src))
    _check_logits(logits, src)
    E, N, C = logits.shape
    if labels is None:
        labels = file_labels
    if labels is None:
        raise ValueError("no labels: pass --labels or include a 'labels' array [N]")
    if n_classes is not None and n_classes != C:
        raise ValueError(f"n_classes {n_classes} does not match the logits' C = {C}")
    labels = validate_labels(labels, C, N)
    if counts is not None and counts.shape != (E, N):
        raise ValueError(f"counts must be [E, N] = [{E}, {N}], got shape {counts.shape}")
    if counts is not None and counts.dtype.kind not in "iuf":
        raise ValueError(f"counts must be numbers, got dtype {counts.dtype}")
    with _removed_on_failure(out_dir):
        store = TrajectoryStore.create(out_dir, labels, C, sample_ids=sample_ids, dtype=dtype, epochs_planned=E,
                                       labels_source=str(src), overwrite=overwrite)
        _fill_arrays(store, logits, counts, E, N, chunk_size, progress)
    return store


def _fill_arrays(store, logits, counts, E, N, chunk_size, progress) -> None:
    with store, _progress(E, "importing", progress) as bar:
        for e in range(E):
            store.begin_epoch(e)
            for start in range(0, N, chunk_size):
                stop = min(N, start + chunk_size)
                c = np.ones(stop - start, np.int32) if counts is None else np.asarray(counts[e, start:stop])
                store.put(e, start, np.asarray(logits[e, start:stop]), c)
            store.complete_epoch(e)
            bar.update(1)


_EPOCH_FILE = re.compile(r"^(\d+)_Output\.npy$")


def import_tdds(src, out_dir, *, labels, n_samples: int | None = None, dtype: str = "float16",
                sample_ids=None, progress: bool = False, overwrite: bool = False) -> TrajectoryStore:
    """Create a store from a TDDS/DUAL dynamics folder (``{e}_Output.npy`` + ``{e}_Index.npy``).

    ``labels`` [N] is required (those tools do not save them); N defaults to ``len(labels)``.
    Epochs must be numbered 0..E-1 without gaps.
    """
    src = Path(src)
    if not src.is_dir():
        raise ValueError(f"not a folder: {src}")
    epochs = sorted(int(m.group(1)) for p in src.iterdir() if (m := _EPOCH_FILE.match(p.name)))
    if not epochs:
        raise ValueError(f"{src} holds no '{{e}}_Output.npy' files")
    if epochs != list(range(len(epochs))):
        raise ValueError(f"{src}: epochs must be numbered 0..{len(epochs) - 1} without gaps, found {epochs}")
    first = _load_array(src / "0_Output.npy")
    if first.ndim != 2 or not np.issubdtype(first.dtype, np.floating):
        raise ValueError(f"{src / '0_Output.npy'} must be float [n, C], got {first.dtype} {first.shape}")
    C = first.shape[1]
    labels = np.asarray(labels)
    N = n_samples if n_samples is not None else len(labels)
    labels = validate_labels(labels, C, N)
    with _removed_on_failure(out_dir):
        store = TrajectoryStore.create(out_dir, labels, C, sample_ids=sample_ids, dtype=dtype,
                                       epochs_planned=len(epochs), labels_source="given", overwrite=overwrite)
        _fill_tdds(store, src, epochs, C, progress)
    return store


def _fill_tdds(store, src, epochs, C, progress) -> None:
    with store, _progress(len(epochs), "importing", progress) as bar:
        for e in epochs:
            out = _load_array(src / f"{e}_Output.npy")
            idx_path = src / f"{e}_Index.npy"
            if not idx_path.exists():
                raise ValueError(f"{idx_path} is missing (every {e}_Output.npy needs its {e}_Index.npy)")
            idx = _load_array(idx_path, mmap=False).reshape(-1)
            if out.shape != (len(idx), C) or not np.issubdtype(out.dtype, np.floating):
                raise ValueError(f"epoch {e}: {out.dtype} outputs {out.shape} for {len(idx)} indices (C = {C})")
            if idx.size and not np.issubdtype(idx.dtype, np.integer):
                raise ValueError(f"{idx_path}: indices must be integers, got dtype {idx.dtype}")
            if np.dtype(store.dtype) == np.float16 and out.size:
                _check_fp16_range(out, src / f"{e}_Output.npy")
            store.begin_epoch(e)
            for s in range(0, len(idx), 65536):
                store.write(e, idx[s : s + 65536], np.asarray(out[s : s + 65536]))
            store.complete_epoch(e)
            bar.update(1)


def _check_fp16_range(out: np.ndarray, where) -> None:
    big = 0.0
    for s in range(0, len(out), 65536):
        part = np.asarray(out[s : s + 65536], np.float64)
        finite = part[np.isfinite(part)]
        if finite.size:
            big = max(big, float(np.abs(finite).max()))
    if big > float(np.finfo(np.float16).max):
        raise ValueError(f"{where}: logit {big:g} does not fit the fp16 store (largest finite fp16: "
                         f"{float(np.finfo(np.float16).max):g}); import with --dtype float32")
