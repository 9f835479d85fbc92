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


def read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` eagerly (no pickles); corrupt files raise ``ValueError``."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{what} not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ValueError(f"{what} is corrupt ({path}: {e})") from None
