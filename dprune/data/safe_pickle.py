"""Loading the CIFAR python-pickle batches without letting the file run code.

Unpickling calls whatever global a pickle names, so a ``data_batch_1`` from a mirror could
run ``os.system`` the moment it is read.  The CIFAR files only need plain containers,
bytes/str/numbers and the few numpy functions that rebuild an array; everything else is
refused before it is looked up.
"""
from __future__ import annotations

import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from dprune.fileio import check_regular_file

try:
    from numpy._core import multiarray as _multiarray, numeric as _numeric
except ImportError:  # numpy < 2 has no numpy._core
    from numpy.core import multiarray as _multiarray, numeric as _numeric


class RefusedPickleError(ValueError):
    """A pickle asked for a global (or codec, or persistent id) that is not admitted."""


PICKLE_MAX_BYTES = 256 << 20
"""Largest pickle file read, and most bytes the admitted numpy functions and codecs may
allocate while one pickle loads.  The largest file dprune unpickles is CIFAR-100's ``train``
(50,000 x 3,072 bytes of pixels, 161 MB); a 148-byte pickle calling
``numpy.ndarray((1000000, 3072), 'u1')`` would otherwise allocate 3 GB."""


class _Budget:
    """Bytes a pickle may still make the admitted functions allocate."""

    def __init__(self, max_bytes: int) -> None:
        self.left = max_bytes

    def charge(self, nbytes: int, what: str) -> None:
        if nbytes > self.left:
            raise RefusedPickleError(f"it builds {what} of {nbytes:,} bytes, beyond the {PICKLE_MAX_BYTES:,} "
                                     f"bytes a pickle may build")
        self.left -= nbytes


def _plain_dtype(*args) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise RefusedPickleError(f"it asks for an array of Python objects (dtype {dtype})")
    return dtype


def _array_bytes(shape, dtype) -> int:
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if not all(isinstance(d, int) and d >= 0 for d in dims):
        raise RefusedPickleError(f"it asks for an array of shape {shape!r}")
    return math.prod(dims) * _plain_dtype(dtype).itemsize


def _admitted(budget: _Budget) -> dict[tuple[str, str], Any]:
    """The globals a pickle may name, each charging what it allocates to ``budget``."""

    def latin1_encode(text: str, encoding: str = "latin1") -> bytes:
        # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(text, "latin1").
        # Any other codec is refused: codec lookup can import modules and some codecs
        # (zlib, bz2) decompress without bound.
        if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
            raise RefusedPickleError(f"it calls _codecs.encode with codec {encoding!r}; only latin1 "
                                     f"is admitted")
        budget.charge(len(text), "bytes")
        return text.encode("latin1")

    def ndarray(shape, dtype=float, *args, **kwargs) -> np.ndarray:
        budget.charge(_array_bytes(shape, dtype), f"an array of shape {shape!r}")
        return np.ndarray(shape, _plain_dtype(dtype), *args, **kwargs)

    def reconstruct(cls, shape, dtype) -> np.ndarray:
        # Pickled arrays start as _reconstruct(numpy.ndarray, (0,), b"b"); the data comes with
        # the array's __setstate__, and must be as long as its shape says.
        if cls is not ndarray:
            raise RefusedPickleError("it rebuilds an array of a class other than numpy.ndarray")
        budget.charge(_array_bytes(shape, dtype), f"an array of shape {shape!r}")
        return _multiarray._reconstruct(np.ndarray, shape, dtype)

    def scalar(dtype, *args):
        budget.charge(_plain_dtype(dtype).itemsize, "a scalar")
        return _multiarray.scalar(dtype, *args)

    def frombuffer(buf, dtype, shape, order):  # protocol 5: a view of bytes the pickle holds
        return _numeric._frombuffer(buf, _plain_dtype(dtype), shape, order)

    admitted: dict[tuple[str, str], Any] = {
        ("_codecs", "encode"): latin1_encode,
        ("numpy", "ndarray"): ndarray,
        ("numpy", "dtype"): _plain_dtype,
    }
    # Files pickled under numpy 1.x name numpy.core, under numpy 2.x numpy._core; both map to
    # the objects of the numpy installed here, looked up once, never imported by name.
    for mod in ("numpy.core", "numpy._core"):
        admitted[(f"{mod}.multiarray", "_reconstruct")] = reconstruct
        admitted[(f"{mod}.multiarray", "scalar")] = scalar
        # Protocol 5 rebuilds arrays from a buffer instead of _reconstruct.
        admitted[(f"{mod}.numeric", "_frombuffer")] = frombuffer
    return admitted


ALLOWED_GLOBALS = tuple(sorted(f"{m}.{n}" for m, n in _admitted(_Budget(0))))


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in :data:`ALLOWED_GLOBALS`, and lets them
    allocate at most ``max_bytes`` in all.

    Python 2 ``str`` objects (CIFAR's keys and label names) load as ``bytes``.
    """

    def __init__(self, file, max_bytes: int = PICKLE_MAX_BYTES) -> None:
        super().__init__(file, encoding="bytes")
        self._admitted = _admitted(_Budget(max_bytes))

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._admitted[(module, name)]
        except KeyError:
            raise RefusedPickleError(
                f"it asks for the global {module}.{name}, and only "
                f"{', '.join(ALLOWED_GLOBALS)} are admitted "
                f"(plain containers, scalars, bytes, str and numpy arrays)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickleError(f"it holds a persistent id {pid!r}")


def load_restricted_pickle(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` admitting only containers, scalars, bytes, str and numpy arrays.

    Parameters
    ----------
    path : str or path-like
        A pickle file (any protocol), e.g. a CIFAR ``data_batch_1``.

    Returns
    -------
    object
        The unpickled object; Python 2 strings come back as ``bytes``.

    Raises
    ------
    RefusedPickleError (a ValueError)
        If the pickle names any other global (``os.system``, ``builtins.eval``, ...)
        or a persistent id (nothing it names is called), asks for an array of Python
        objects, or is larger, or builds more, than :data:`PICKLE_MAX_BYTES`.
    ValueError
        If the file is missing, not a regular file, or not a readable pickle.
    """
    path = Path(path)
    size = check_regular_file(path, "pickle")
    if size > PICKLE_MAX_BYTES:
        raise RefusedPickleError(f"refusing to unpickle {path}: {size:,} bytes, beyond the {PICKLE_MAX_BYTES:,} "
                                 f"a pickle may have")
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f).load()
        except RefusedPickleError as e:
            raise RefusedPickleError(f"refusing to unpickle {path}: {e}") from None
        except Exception as e:  # a corrupt pickle can fail in many ways; report them as one
            raise ValueError(f"{path} is not a readable pickle: {type(e).__name__}: {e}") from e
