"""Atomic file writes and strict readers for the JSON/npz files dprune produces.

Every file another stage reads (``meta.json``, ``scores.npz``, ``manifest.json``/``.npz``)
is written to a temporary file in the same directory, flushed to disk, then renamed over
the target.  A reader therefore sees either the previous complete file or the new complete
file, never a torn one, even if the writer is killed half way.
"""
from __future__ import annotations

import json
import math
import os
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np


def _read_umask() -> int:
    # os.umask can only be read by setting it; done once, at import, not while writers run.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_read_umask()


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; give it the mode open() would (0666 minus the umask), so
        # results are as readable by a group as any other file the user writes.
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.filename is None:  # a full disk: name the file being written
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_with(path: Path, write: Callable[[Any], None]) -> None:
    """Atomically write ``path`` by calling ``write(binary file object)`` (e.g. ``torch.save``)."""
    _atomic_write(path, write)


def fsync_path(path: Path) -> None:
    """fsync a file (or a directory, making renames in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: Path, path: Path) -> None:
    """fsync ``tmp``, rename it over ``path``, fsync the directory."""
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(Path(path).parent)


def temp_name(path: Path) -> Path:
    """The name a writer uses for ``path`` until it is complete: ``.NAME.tmp`` beside it, which the
    next writer of the directory deletes if this one is killed (see :mod:`dprune.locking`)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def open_npy_for_writing(path: Path, dtype, shape: tuple) -> np.memmap:
    """Create an ``.npy`` file of ``shape`` with its data blocks allocated, and map it.

    Memory-mapped writes into a sparse file fail with SIGBUS when the disk fills; allocating
    first (``posix_fallocate``) turns a full disk into an ``OSError`` (ENOSPC) here, before
    anything is written.  The file starts as zeros.
    """
    path = Path(path)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    offset = mm.offset
    del mm
    size = offset + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    fd = os.open(path, os.O_RDWR)
    try:
        if size:
            os.posix_fallocate(fd, 0, size)
    except OSError as e:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    return np.load(path, mmap_mode="r+", allow_pickle=False)


def atomic_write_json(path: Path, obj: Any) -> None:
    data = (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode("utf-8")
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    _atomic_write(path, lambda f: f.write(data))


def atomic_savez(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    _atomic_write(path, lambda f: np.savez(f, **arrays))


# ---------------------------------------------------------------------------- reading budgets
# Every file dprune reads may come from someone else (a downloaded dataset, a shared run
# folder), so each reader has a size and a depth budget, checked before the memory is spent.
# A refusal is a ValueError naming the file and the budget.

TEXT_MAX_BYTES = 64 << 20
"""Largest text file read whole: JSON (manifests, ``meta.json``, configs, a scores file's
``__meta__``), label and list files, sample ids.  The largest dprune writes is a manifest,
about 9 bytes per sample in ``kept`` and ``pruned``: 64 MiB holds 7M samples (ImageNet-1k
has 1.28M), and parsing a hostile file of this size stays well under 1 GB."""

JSON_MAX_DEPTH = 32
"""Deepest nesting of a JSON file.  dprune's own files nest 5 levels (manifest, scores,
params, scorer, option), DeepSpeed configs 3; Python's parser recurses once per level, so a
file of ``[`` x 200,000 would otherwise end in a RecursionError."""

ARRAY_MAX_BYTES = 512 << 20
"""Largest array read whole into memory rather than mapped: an ``.npz`` member (scores,
manifest arrays), labels, indices.  Float64 scores or int64 labels of 64M samples fit; a
small compressed file that claims more is refused from its header, before it is inflated."""


def check_regular_file(path: Path, what: str) -> int:
    """The size of ``path`` in bytes; a ``ValueError`` if it is missing or not a regular file
    (a FIFO would block the reader forever, a device never ends)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"{what} not found: {path}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what} {path} is not a regular file")
    return st.st_size


def read_text(path: Path, what: str, max_bytes: int = TEXT_MAX_BYTES) -> str:
    """The UTF-8 text of ``path``, refused (``ValueError`` naming the file) beyond ``max_bytes``."""
    path = Path(path)
    size = check_regular_file(path, what)
    if size > max_bytes:
        raise ValueError(f"{what} {path} is too large: {size:,} bytes, the budget is {max_bytes:,}")
    with open(path, "rb") as f:
        data = f.read(size + 1)
    if len(data) > size:
        raise ValueError(f"{what} {path} changed while it was read")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None


def _nesting_exceeds(obj: Any, max_depth: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth > max_depth:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def parse_json(text: str, what: str, source: Any, max_depth: int = JSON_MAX_DEPTH) -> Any:
    """``json.loads(text)`` within the depth budget; every failure is a ``ValueError``
    ``"{what} is corrupt ({source}: ...)"``."""
    too_deep = f"{what} is corrupt ({source}: nested deeper than {max_depth} levels)"
    try:
        obj = json.loads(text)
    except RecursionError:
        raise ValueError(too_deep) from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} is corrupt ({source}: {e.msg} at line {e.lineno})") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise ValueError(f"{what} is corrupt ({source}: {e})") from None
    if isinstance(obj, (dict, list)) and _nesting_exceeds(obj, max_depth):
        raise ValueError(too_deep)
    return obj


def read_json(path: Path, what: str, max_bytes: int = TEXT_MAX_BYTES) -> Any:
    """Read a JSON file within the size and depth budgets; every failure is a ``ValueError`` naming the file."""
    path = Path(path)
    return parse_json(read_text(path, what, max_bytes), what, path)


def read_npy_header(f) -> tuple[tuple, bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of the ``.npy`` stream ``f``, positioned at its data.

    Refuses (``ValueError``) what is not an ``.npy`` stream (raw pickle bytes, say) and arrays
    of Python objects, which only a pickle can rebuild.
    """
    version = np.lib.format.read_magic(f)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"unsupported .npy version {version}")
    shape, fortran, dtype = readers[version](f)
    if dtype.hasobject:
        raise ValueError(f"it holds Python objects (dtype {dtype}), which only a pickle can rebuild")
    return shape, fortran, dtype


def check_array_budget(shape: tuple, dtype: np.dtype, max_bytes: int, what: str) -> int:
    """The bytes of an array of ``shape`` and ``dtype``, refused (``ValueError``) beyond
    ``max_bytes``, or for text beyond :data:`TEXT_MAX_BYTES` characters per element."""
    nbytes = math.prod(shape) * dtype.itemsize
    chars = dtype.itemsize // (4 if dtype.kind == "U" else 1) if dtype.kind in "SU" else 0
    if chars > TEXT_MAX_BYTES:
        raise ValueError(f"{what} claims strings of {chars:,} characters; the budget is {TEXT_MAX_BYTES:,}")
    if nbytes > max_bytes:
        raise ValueError(f"{what} claims {dtype} {tuple(shape)}, {nbytes:,} bytes; the budget is {max_bytes:,}")
    return nbytes


def load_npy(path: Path, what: str, *, mmap: bool, max_bytes: int = ARRAY_MAX_BYTES) -> np.ndarray:
    """Load (or with ``mmap`` map read-only) the ``.npy`` file ``path``, its header checked first.

    The data the header claims must be in the file, and an array read into memory must fit
    ``max_bytes``; arrays of objects are refused.  Every failure is a ``ValueError`` naming the file.
    """
    path = Path(path)
    size = check_regular_file(path, what)
    try:
        with open(path, "rb") as f:
            shape, _, dtype = read_npy_header(f)
            offset = f.tell()
        nbytes = check_array_budget(shape, dtype, math.inf if mmap else max_bytes, "its header")
        if offset + nbytes > size:
            raise ValueError(f"its header claims {dtype} {tuple(shape)}, {nbytes:,} bytes, and the file holds "
                             f"{size - offset:,}")
        return np.load(path, mmap_mode="r" if mmap and nbytes else None, allow_pickle=False)
    except (OSError, ValueError, EOFError, SyntaxError) as e:
        raise ValueError(f"{what} is corrupt ({path}: {e})") from None


def open_npz_member(zf: zipfile.ZipFile, key: str, max_bytes: float = ARRAY_MAX_BYTES):
    """``(stream at the data, shape, dtype, fortran_order)`` of the array ``key`` of an open ``.npz``.

    The header is checked before any data is read: an ``.npy`` array (not raw pickle bytes),
    no Python objects, within ``max_bytes`` (``math.inf`` for a caller that streams the data
    in bounded pieces).  Failures are ``ValueError`` naming the entry; the caller closes the stream.
    """
    f = zf.open(f"{key}.npy")
    try:
        try:
            shape, fortran, dtype = read_npy_header(f)
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"entry {key!r} is not an array: {e}") from None
        check_array_budget(shape, dtype, max_bytes, f"entry {key!r}")
    except BaseException:
        f.close()
        raise
    return f, tuple(shape), dtype, fortran


def read_exactly(f, out: np.ndarray, what: str, chunk: int = 1 << 24) -> None:
    """Fill the C-contiguous ``out`` from the stream ``f``, in pieces (no second copy of the data)."""
    view = memoryview(out.reshape(-1).view(np.uint8))
    pos = 0
    while pos < len(view):
        data = f.read(min(chunk, len(view) - pos))
        if not data:
            raise ValueError(f"{what} ends before the {len(view):,} bytes its header claims")
        view[pos : pos + len(data)] = data
        pos += len(data)


def read_npz_array(zf: zipfile.ZipFile, key: str, spec: tuple | None = None,
                   max_bytes: int = ARRAY_MAX_BYTES) -> np.ndarray:
    """The array ``key`` of an open ``.npz``, its header checked (see :func:`open_npz_member`)
    and, with ``spec = (shape, dtype kinds)``, matched before its data is read."""
    f, shape, dtype, fortran = open_npz_member(zf, key, math.inf)
    with f:
        if spec is not None:
            want_shape, kind = spec
            if shape != tuple(want_shape) or (kind is not None and dtype.kind not in kind):
                raise ValueError(f"entry {key!r} is {dtype} {shape}, expected {kind or 'any'} {tuple(want_shape)}")
        check_array_budget(shape, dtype, max_bytes, f"entry {key!r}")
        array = np.empty(shape[::-1] if fortran else shape, dtype)
        read_exactly(f, array, f"entry {key!r}")
    return array.T if fortran else array


def read_npz(path: Path, what: str, expect: Mapping[str, tuple] | None = None,
             default: tuple | None = None, max_bytes: int = ARRAY_MAX_BYTES) -> dict[str, np.ndarray]:
    """Load the arrays of an ``.npz`` (no pickles), checking each entry's header first.

    ``expect`` maps entry names to ``(shape, dtype kind)`` (kind as in ``dtype.kind``:
    ``"f"``, ``"i"``, ``"b"``, ``"U"``; ``None`` for any); ``default`` applies to entries not
    named there.  Every entry must fit ``max_bytes`` (text: :data:`TEXT_MAX_BYTES` characters
    per string).  An entry whose header does not match is refused before its data is read, so
    a small compressed file that claims a huge array cannot take the memory.  Every failure is
    a ``ValueError`` naming the file.
    """
    path = Path(path)
    check_regular_file(path, what)
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if not name.endswith(".npy"):
                    raise ValueError(f"unexpected member {name!r}")
                key = name[:-4]
                out[key] = read_npz_array(zf, key, (expect or {}).get(key, default), max_bytes)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as e:
        raise ValueError(f"{what} is corrupt ({path}: {e})") from None
    return out
