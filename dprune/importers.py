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

import math
import re
import shutil
import zipfile
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from .fileio import check_regular_file, load_npy, open_npz_member, read_exactly, read_npz_array
from .labels import validate_labels
from .store import TrajectoryStore


IMPORT_SIZE_FACTOR = 16
"""Default largest store an import creates: this many times the source's bytes on disk, but at
least :data:`IMPORT_MIN_SIZE`.  An uncompressed source makes a store no larger than itself (fp16
halves fp32) and compressed logits deflate a few times; a 1.65 MB ``.npz`` of compressed zeros
that claims 1.6 GB of logits is a zip bomb.  ``max_size`` (``--max-size``) sets the limit instead."""

IMPORT_MIN_SIZE = 256 << 20
"""The default limit of a store's size for small sources (see :data:`IMPORT_SIZE_FACTOR`)."""

_CHUNK_ELEMENTS = 1 << 22  # ~16 MB of fp32 logits per piece read from the source


def _progress(total, desc, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="epoch", disable=not enabled, leave=False)


def _load_array(path: Path, mmap: bool = True) -> np.ndarray:
    return load_npy(path, "array file", mmap=mmap)


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
    return load_npy(Path(path), "labels file", mmap=False)


def check_store_size(E: int, N: int, C: int, dtype: str, source_bytes: int, max_size: int | None) -> None:
    """Refuse a store of E epochs x N samples x C classes beyond ``max_size`` bytes (default:
    :data:`IMPORT_SIZE_FACTOR` x ``source_bytes``, at least :data:`IMPORT_MIN_SIZE`)."""
    size = E * N * (C * np.dtype(dtype).itemsize + 4)  # logits and int32 counts
    limit = max_size if max_size is not None else max(IMPORT_MIN_SIZE, IMPORT_SIZE_FACTOR * source_bytes)
    if size > limit:
        how = "the --max-size given" if max_size is not None else (
            f"{IMPORT_SIZE_FACTOR} x the {source_bytes:,} bytes of the source, at least {IMPORT_MIN_SIZE:,}")
        raise ValueError(f"the store would take {size:,} bytes ({E} epochs x {N:,} samples x {C:,} classes, "
                         f"{dtype}), more than {limit:,} ({how}); pass --max-size to allow it")


class ArrayStream:
    """An array's elements in C order, read a piece at a time: from a mapped ``.npy`` or out of
    an ``.npz`` member, which is never inflated whole.  ``read(k)`` gives the next ``k``, 1-D."""

    def __init__(self, shape: tuple, dtype: np.dtype, read) -> None:
        self.shape, self.dtype, self.read = tuple(shape), np.dtype(dtype), read

    @classmethod
    def of_array(cls, array: np.ndarray, where) -> "ArrayStream":
        if not array.flags.c_contiguous:
            raise ValueError(f"{where}: Fortran-ordered arrays are not supported (save np.ascontiguousarray)")
        flat, pos = array.reshape(-1), 0

        def read(k: int) -> np.ndarray:
            nonlocal pos
            pos += k
            return np.asarray(flat[pos - k : pos])

        return cls(array.shape, array.dtype, read)

    @classmethod
    def of_member(cls, f, shape: tuple, dtype: np.dtype, fortran: bool, where) -> "ArrayStream":
        if fortran:
            raise ValueError(f"{where}: Fortran-ordered arrays are not supported (save np.ascontiguousarray)")

        def read(k: int) -> np.ndarray:
            out = np.empty(k, dtype)
            read_exactly(f, out, str(where))
            return out

        return cls(shape, dtype, read)


@contextmanager
def open_array_source(src: Path):
    """``(logits [E, N, C], counts [E, N] or None, read_labels, source bytes)`` of an ``.npz``, an
    ``.npy`` or a folder of ``.npy`` files: logits and counts as :class:`ArrayStream`, and
    ``read_labels()`` the labels [N] or None, read only when called (after the sizes are checked)."""
    src = Path(src)
    if src.is_dir():
        files = {name: src / f"{name}.npy" for name in ("logits", "counts", "labels")}
        if not files["logits"].exists():
            raise ValueError(f"{src} has no logits.npy")
        present = {k: p for k, p in files.items() if p.exists()}
        streams = {k: ArrayStream.of_array(_load_array(p), p) for k, p in present.items() if k != "labels"}

        def read_labels():
            return _load_array(files["labels"], mmap=False) if "labels" in present else None

        yield streams["logits"], streams.get("counts"), read_labels, sum(p.stat().st_size for p in present.values())
    elif src.suffix == ".npy":
        yield ArrayStream.of_array(_load_array(src), src), None, lambda: None, src.stat().st_size
    elif src.suffix == ".npz":
        check_regular_file(src, "array file")
        with ExitStack() as stack:
            try:
                zf = stack.enter_context(zipfile.ZipFile(src))
                names = zf.namelist()
                streams = {}
                for key in ("logits", "counts"):
                    if f"{key}.npy" in names:
                        f, shape, dtype, fortran = open_npz_member(zf, key, max_bytes=math.inf)
                        stack.enter_context(f)
                        streams[key] = ArrayStream.of_member(f, shape, dtype, fortran, f"{src}, entry {key!r}")
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
                raise ValueError(f"cannot read {src}: {e}") from None
            if "logits" not in streams:
                keys = ", ".join(n[:-4] if n.endswith(".npy") else n for n in names)
                raise ValueError(f"{src} has no 'logits' array (found: {keys or 'nothing'})")

            def read_labels():
                if "labels.npy" not in names:
                    return None
                try:
                    return read_npz_array(zf, "labels")
                except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
                    raise ValueError(f"cannot read {src}: {e}") from None

            yield streams["logits"], streams.get("counts"), read_labels, src.stat().st_size
    elif not src.exists():
        raise ValueError(f"not found: {src}")
    else:
        raise ValueError(f"{src}: expected a .npz, a .npy or a folder of .npy files")


def _check_logits(logits: ArrayStream, where) -> None:
    if len(logits.shape) != 3:
        raise ValueError(f"{where}: logits must be [E, N, C], got shape {logits.shape}")
    if not np.issubdtype(logits.dtype, np.floating):
        raise ValueError(f"{where}: logits must be floating point, got dtype {logits.dtype}")


def import_arrays(src, out_dir, *, labels=None, n_classes: int | None = None, dtype: str = "float16",
                  sample_ids=None, chunk_size: int = 65536, progress: bool = False, overwrite: bool = False,
                  max_size: int | None = None) -> TrajectoryStore:
    """Create a store in ``out_dir`` from an array source (see :func:`open_array_source`).

    The source is read a piece at a time, so memory stays bounded whatever its size; a store
    beyond ``max_size`` bytes (default: see :func:`check_store_size`) is refused before it is made.
    """
    with open_array_source(Path(src)) as (logits, counts, read_labels, source_bytes):
        _check_logits(logits, src)
        E, N, C = logits.shape
        check_store_size(E, N, C, dtype, source_bytes, max_size)
        if labels is None:
            labels = read_labels()
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
            _fill_arrays(store, logits, counts, E, N, C, max(1, min(chunk_size, _CHUNK_ELEMENTS // C)), progress)
    return store


def _fill_arrays(store, logits: ArrayStream, counts: ArrayStream | None, E, N, C, chunk_size, progress) -> None:
    with store, _progress(E, "importing", progress) as bar:
        for e in range(E):
            store.begin_epoch(e)
            for start in range(0, N, chunk_size):
                rows = min(N, start + chunk_size) - start
                c = np.ones(rows, np.int32) if counts is None else counts.read(rows)
                store.put(e, start, logits.read(rows * C).reshape(rows, C), c)
            store.complete_epoch(e)
            bar.update(1)


_EPOCH_FILE = re.compile(r"^(\d+)_Output\.npy$")


def import_tdds(src, out_dir, *, labels, n_samples: int | None = None, dtype: str = "float16",
                sample_ids=None, progress: bool = False, overwrite: bool = False,
                max_size: int | None = None) -> TrajectoryStore:
    """Create a store from a TDDS/DUAL dynamics folder (``{e}_Output.npy`` + ``{e}_Index.npy``).

    ``labels`` [N] is required (those tools do not save them); N defaults to ``len(labels)``.
    Epochs must be numbered 0..E-1 without gaps.  A store beyond ``max_size`` bytes (default:
    see :func:`check_store_size`) is refused before it is made.
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
    source_bytes = sum(p.stat().st_size for e in epochs for p in (src / f"{e}_Output.npy", src / f"{e}_Index.npy")
                       if p.exists())
    check_store_size(len(epochs), N, C, dtype, source_bytes, max_size)
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
