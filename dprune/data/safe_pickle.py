"""Loading the CIFAR python-pickle batches without letting the file run code.

Unpickling calls whatever global a pickle names, so a ``data_batch_1`` from a mirror could
run ``os.system`` the moment it is read.  The CIFAR files only need plain containers,
bytes/str/numbers and the few numpy functions that rebuild an array; everything else is
refused before it is looked up.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

try:
    from numpy._core import multiarray as _multiarray, numeric as _numeric
except ImportError:  # numpy < 2 has no numpy._core
    from numpy.core import multiarray as _multiarray, numeric as _numeric


class RefusedPickleError(ValueError):
    """A pickle asked for a global (or codec, or persistent id) that is not admitted."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(text, "latin1").
    # Any other codec is refused: codec lookup can import modules and some codecs
    # (zlib, bz2) decompress without bound.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise RefusedPickleError(f"it calls _codecs.encode with codec {encoding!r}; only latin1 "
                                 f"is admitted")
    return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
# Files pickled under numpy 1.x name numpy.core, under numpy 2.x numpy._core; both map to
# the objects of the numpy installed here, looked up once, never imported by name.
for _mod in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_mod}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED[(f"{_mod}.multiarray", "scalar")] = _multiarray.scalar
    # Protocol 5 rebuilds arrays from a buffer instead of _reconstruct.
    _ALLOWED[(f"{_mod}.numeric", "_frombuffer")] = _numeric._frombuffer

ALLOWED_GLOBALS = tuple(sorted(f"{m}.{n}" for m, n in _ALLOWED))


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in :data:`ALLOWED_GLOBALS`.

    Python 2 ``str`` objects (CIFAR's keys and label names) load as ``bytes``.
    """

    def __init__(self, file) -> None:
        super().__init__(file, encoding="bytes")

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
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
    FileNotFoundError
        If ``path`` does not exist.
    RefusedPickleError (a ValueError)
        If the pickle names any other global (``os.system``, ``builtins.eval``, ...)
        or a persistent id; nothing it names is called.
    ValueError
        If the file is not a readable pickle.
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f).load()
        except RefusedPickleError as e:
            raise RefusedPickleError(f"refusing to unpickle {path}: {e}") from None
        except Exception as e:  # a corrupt pickle can fail in many ways; report them as one
            raise ValueError(f"{path} is not a readable pickle: {type(e).__name__}: {e}") from e
