"""MNIST and Fashion-MNIST: the idx file reader and the loader of the four idx files.

Legend: N samples, H x W image size.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from dprune.data.base import Split, TensorImageDataset, Transform
from dprune.fileio import ARRAY_MAX_BYTES

#: Where Debian's ``dataset-fashion-mnist`` package installs the idx files.
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")

_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_READ_CHUNK = 1 << 24


def read_idx(path: str | os.PathLike, *, expect_magic: int | None = None) -> np.ndarray:
    """Read an idx file (the MNIST format), plain or gzip-compressed (``.gz``).

    Parameters
    ----------
    path : str or path-like
    expect_magic : int, optional
        The magic number the file must carry, e.g. ``0x00000803`` for uint8 3-D images,
        ``0x00000801`` for uint8 labels.

    Returns
    -------
    np.ndarray
        Native-endian array of the shape in the header.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the magic number is not an idx one (or not ``expect_magic``), or the data is
        shorter or longer than the header's sizes say, or the gzip stream is corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"idx file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            header = f.read(4)
            if len(header) < 4:
                raise ValueError(f"{path} is too short to be an idx file ({len(header)} bytes)")
            magic = int.from_bytes(header, "big")
            type_code, ndim = header[2], header[3]
            if header[:2] != b"\0\0" or type_code not in _IDX_DTYPES or ndim == 0:
                raise ValueError(
                    f"{path} is not an idx file: magic number 0x{magic:08x}, expected "
                    f"0x0000TTDD with a type code TT in "
                    f"{', '.join(f'{t:02x}' for t in _IDX_DTYPES)} and DD >= 1 dimensions")
            if expect_magic is not None and magic != expect_magic:
                raise ValueError(
                    f"{path} has magic number 0x{magic:08x}, expected 0x{expect_magic:08x}")
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise ValueError(f"{path} is truncated inside its {ndim}-dimension header")
            dims = struct.unpack(f">{ndim}I", dims_raw)
            dtype = _IDX_DTYPES[type_code]
            expected = math.prod(dims) * dtype.itemsize
            # A plain file holds at most its size; a gzip stream can inflate without end, so what
            # its header claims is held to the budget of arrays read whole.
            if opener is gzip.open and expected > ARRAY_MAX_BYTES:
                raise ValueError(f"{path}: its header claims {dims} of {dtype}, {expected:,} bytes; the "
                                 f"budget is {ARRAY_MAX_BYTES:,}")
            # Read in chunks, one byte past the expected size: a header claiming an absurd
            # size must not make us allocate it, and trailing bytes mean a wrong header.
            chunks, remaining = [], expected + 1
            while remaining > 0:
                chunk = f.read(min(remaining, _READ_CHUNK))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"cannot read idx file {path}: {e}") from e
    payload = b"".join(chunks)
    if len(payload) != expected:
        what = "truncated" if len(payload) < expected else "longer than its header says"
        raise ValueError(
            f"{path} is {what}: header {dims} of {dtype} needs {expected} data bytes, "
            f"found {len(payload) if len(payload) <= expected else 'more'}")
    return np.frombuffer(payload, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"MNIST-format file not found: neither {root / stem} nor "
                            f"{root / stem}.gz exists")


def load_mnist(
    root: str | os.PathLike,
    *,
    name: str = "mnist",
    train_transform: Transform | None = None,
    test_transform: Transform | None = None,
) -> Split:
    """MNIST or Fashion-MNIST from the four idx files, plain or ``.gz``.

    Parameters
    ----------
    root : str or path-like
        Folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each possibly ``.gz``).
    name : {"mnist", "fashion-mnist"}
        Sets the sample id prefix and class names.
    train_transform, test_transform : callable, optional
        Applied to the uint8 ``[1, H, W]`` image tensors.

    Returns
    -------
    train, test : TensorImageDataset
        Images ``[1, H, W]`` (28x28 for the real files), 10 classes, sample ids
        ``{name}/train/NNNNN`` and ``{name}/test/NNNNN``.
    """
    if name not in ("mnist", "fashion-mnist"):
        raise ValueError(f"name must be 'mnist' or 'fashion-mnist', got {name!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{name} folder not found: {root}")
    class_names = FASHION_MNIST_CLASSES if name == "fashion-mnist" else [str(c) for c in range(10)]

    def split(prefix: str, split_name: str, transform: Transform | None) -> TensorImageDataset:
        images_path = _find_idx(root, f"{prefix}-images-idx3-ubyte")
        labels_path = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
        images_NHW = read_idx(images_path, expect_magic=0x00000803)
        labels_N = read_idx(labels_path, expect_magic=0x00000801).astype(np.int64)
        if len(images_NHW) != len(labels_N):
            raise ValueError(f"{images_path} holds {len(images_NHW)} images but {labels_path} "
                             f"holds {len(labels_N)} labels")
        if labels_N.size and labels_N.max() >= 10:
            raise ValueError(f"{labels_path} holds label {labels_N.max()}; expected 0..9")
        return TensorImageDataset(
            torch.from_numpy(images_NHW).unsqueeze(1), labels_N,
            [f"{name}/{split_name}/{i:05d}" for i in range(len(labels_N))],
            num_classes=10, transform=transform, class_names=class_names)

    return split("train", "train", train_transform), split("t10k", "test", test_transform)
