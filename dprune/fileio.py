"""Atomic file writes and strict readers for the JSON/npz files dprune produces.

Every file another stage reads (``meta.json``, ``scores.npz``, ``manifest.json``/``.npz``)
is written to a temporary file in the same directory, flushed to disk, then renamed over
the target.  A reader therefore sees either the previous complete file or the new complete
file, never a torn one, even if the writer is killed half way.
"""
from __future__ import annotations

import json
import os
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
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
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


def read_json(path: Path, what: str) -> Any:
    """Read a JSON file, turning every failure into a ``ValueError`` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{what} not found: {path}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} is corrupt ({path}: {e.msg} at line {e.lineno})") from None


def read_npy_header(f) -> tuple[tuple, bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of the ``.npy`` stream ``f``, positioned at its data."""
    version = np.lib.format.read_magic(f)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"unsupported .npy version {version}")
    return readers[version](f)


def read_npz(path: Path, what: str, expect: Mapping[str, tuple] | None = None,
             default: tuple | None = None) -> dict[str, np.ndarray]:
    """Load the arrays of an ``.npz`` (no pickles), checking each entry's header first.

    ``expect`` maps entry names to ``(shape, dtype kind)`` (kind as in ``dtype.kind``:
    ``"f"``, ``"i"``, ``"b"``, ``"U"``; ``None`` for any); ``default`` applies to entries not
    named there.  An entry whose header does not match is refused before its data is read, so
    a small file that claims a huge array cannot take the memory.  Every failure is a
    ``ValueError`` naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{what} not found: {path}")
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    raise ValueError(f"unexpected member {info.filename!r}")
                key = info.filename[:-4]
                spec = (expect or {}).get(key, default)
                with zf.open(info) as f:
                    shape, _, dtype = read_npy_header(f)
                    if dtype.hasobject:
                        raise ValueError(f"entry {key!r} holds Python objects")
                    if spec is not None:
                        want_shape, kind = spec
                        if tuple(shape) != tuple(want_shape) or (kind is not None and dtype.kind not in kind):
                            raise ValueError(f"entry {key!r} is {dtype} {tuple(shape)}, expected "
                                             f"{kind or 'any'} {tuple(want_shape)}")
                with zf.open(info) as f:
                    out[key] = np.lib.format.read_array(f, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as e:
        raise ValueError(f"{what} is corrupt ({path}: {e})") from None
    return out
