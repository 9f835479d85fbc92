"""CIFAR-10 and CIFAR-100 from the python-pickle release, read with a restricted unpickler.

Legend: N samples.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dprune.data.base import Split, TensorImageDataset, Transform
from dprune.data.safe_pickle import load_restricted_pickle

_CIFAR_LAYOUT = {
    # num_classes: (folder, train files, test files, meta file, label key, names key)
    10: ("cifar-10-batches-py", tuple(f"data_batch_{k}" for k in range(1, 6)), ("test_batch",),
         "batches.meta", "labels", "label_names"),
    100: ("cifar-100-python", ("train",), ("test",), "meta", "fine_labels", "fine_label_names"),
}


def _str_keys(obj: Any, path: Path) -> dict[str, Any]:
    # The released files are Python 2 pickles, whose str keys load as bytes; a copy
    # re-pickled under Python 3 may have str keys. Both are accepted.
    if not isinstance(obj, dict):
        raise ValueError(f"{path} should hold a dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _str_keys(load_restricted_pickle(path), path)
    missing = [k for k in ("data", label_key) if k not in batch]
    if missing:
        raise ValueError(f"{path} lacks the key(s) {missing}; it has {sorted(map(str, batch))}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: 'data' must be a uint8 array [N, 3072], got {desc}")
    raw = batch[label_key]
    # Checked before any conversion: a small pickle can hold a list whose items are the same
    # nested list again and again, which np.asarray would expand to gigabytes.
    if isinstance(raw, np.ndarray):
        ok = raw.ndim == 1 and (raw.size == 0 or np.issubdtype(raw.dtype, np.integer))
        desc = f"{raw.dtype} {raw.shape}"
    elif isinstance(raw, list):
        ok = all(type(v) is int for v in raw)
        desc = "a list of " + ", ".join(sorted({type(v).__name__ for v in raw[:1000]})) if raw else "an empty list"
    else:
        ok, desc = False, type(raw).__name__
    if not ok or len(raw) != len(data):
        raise ValueError(f"{path}: {label_key!r} must be {len(data)} ints, got {desc} of length "
                         f"{len(raw) if hasattr(raw, '__len__') else '?'}")
    labels_N = np.asarray(raw, dtype=np.int64)
    # Rows are the red, green then blue 32x32 planes, each row-major: exactly CHW.
    return data.reshape(-1, 3, 32, 32), labels_N.astype(np.int64)


def load_cifar(
    root: str | os.PathLike,
    num_classes: int,
    *,
    train_transform: Transform | None = None,
    test_transform: Transform | None = None,
) -> Split:
    """CIFAR-10 or CIFAR-100 from the python-pickle release, read with a restricted unpickler.

    Parameters
    ----------
    root : str or path-like
        The extracted folder (``cifar-10-batches-py`` / ``cifar-100-python``) or the
        folder that contains it.
    num_classes : {10, 100}
        Which CIFAR (CIFAR-100 uses its 100 fine labels).
    train_transform, test_transform : callable, optional
        Applied to the uint8 ``[3, 32, 32]`` image tensors.

    Returns
    -------
    train, test : TensorImageDataset
        50,000 and 10,000 images for the real files; sample ids ``cifar10/train/NNNNN``
        (position in the concatenated batches) and ``cifar10/test/NNNNN``, or ``cifar100/…``.

    Raises
    ------
    FileNotFoundError
        Naming the first missing file of the layout.
    ValueError
        If a pickle names a global other than plain containers and numpy arrays (it is
        never called), or holds data of the wrong shape.
    """
    if num_classes not in _CIFAR_LAYOUT:
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes!r}")
    folder, train_files, test_files, meta_file, label_key, names_key = _CIFAR_LAYOUT[num_classes]
    root = Path(root)
    base = root / folder if (root / folder).is_dir() else root
    expected = (*train_files, *test_files, meta_file)
    for file_name in expected:
        if not (base / file_name).is_file():
            raise FileNotFoundError(
                f"CIFAR-{num_classes} file {base / file_name} not found; expected the "
                f"python release layout {folder}/{{{', '.join(expected)}}}")
    meta = _str_keys(load_restricted_pickle(base / meta_file), base / meta_file)
    names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta.get(names_key, [])]
    if len(names) != num_classes:
        raise ValueError(f"{base / meta_file}: expected {num_classes} names under "
                         f"{names_key!r}, got {len(names)}")
    prefix = f"cifar{num_classes}"

    def split(files: Sequence[str], split_name: str,
              transform: Transform | None) -> TensorImageDataset:
        parts = [_read_cifar_batch(base / f, label_key) for f in files]
        images_N3HW = np.concatenate([p[0] for p in parts])
        labels_N = np.concatenate([p[1] for p in parts])
        if labels_N.size and (labels_N.min() < 0 or labels_N.max() >= num_classes):
            raise ValueError(f"{base}: {split_name} labels span [{labels_N.min()}, "
                             f"{labels_N.max()}], expected [0, {num_classes})")
        return TensorImageDataset(
            torch.from_numpy(images_N3HW), labels_N,
            [f"{prefix}/{split_name}/{i:05d}" for i in range(len(labels_N))],
            num_classes=num_classes, transform=transform, class_names=names)

    return split(train_files, "train", train_transform), split(test_files, "test", test_transform)
