"""Loaders of the image classification datasets, in their release layouts.

Every loader returns ``(train, test)`` as :class:`LabeledImageDataset` and applies no
transform unless given one (images come out as float [0, 1] tensors);
:func:`build_dataset` is the one entry point that adds the default transforms.  Nothing is
ever downloaded: datasets are read from a folder the user points at, except scikit-learn's
bundled ``digits``, the default when no data is at hand.

Legend: N samples, H x W image size.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from dprune.data.base import FileImageDataset, LabeledImageDataset, TensorImageDataset, Transform
from dprune.data.paths import resolve_under, scan_files
from dprune.data.safe_pickle import load_restricted_pickle
from dprune.data.transforms import default_transform
from dprune.fileio import ARRAY_MAX_BYTES, read_text
from dprune.labels import MAX_CLASSES, check_class_count

DATASET_NAMES = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "cub200", "imagefolder")

#: Where Debian's ``dataset-fashion-mnist`` package installs the idx files.
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")

#: File endings (lower case) an ImageFolder scan treats as images; others are skipped.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")

Split = tuple[LabeledImageDataset, LabeledImageDataset]


# --------------------------------------------------------------------------- digits

def load_digits_dataset(
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    train_transform: Transform | None = None,
    test_transform: Transform | None = None,
) -> Split:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), split with a seed.

    Parameters
    ----------
    seed : int
        Seed of the stratified train/test split.
    test_fraction : float
        Fraction of each class held out for testing, in (0, 1).
    train_transform, test_transform : callable, optional
        Applied to the float ``[1, 8, 8]`` image tensors.

    Returns
    -------
    train, test : TensorImageDataset
        Images float32 ``[1, 8, 8]`` in [0, 1]; sample ids ``digits/NNNNN`` with the index in
        ``sklearn.datasets.load_digits()``, so an id names the same image for every seed.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not isinstance(test_fraction, (int, float)) or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    bunch = load_digits()
    # The pixels are counts of set bits in 4x4 blocks, 0..16.
    images_N188 = torch.from_numpy((bunch.images / 16.0).astype(np.float32)).unsqueeze(1)
    labels_N = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels_N)), test_size=test_fraction, stratify=labels_N, random_state=seed)
    names = [str(c) for c in range(10)]

    def split(idx: np.ndarray, transform: Transform | None) -> TensorImageDataset:
        idx = np.sort(idx)
        return TensorImageDataset(
            images_N188[idx], labels_N[idx], [f"digits/{i:05d}" for i in idx],
            num_classes=10, transform=transform, class_names=names)

    return split(train_idx, train_transform), split(test_idx, test_transform)


# --------------------------------------------------------------------------- MNIST idx

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


# --------------------------------------------------------------------------- CIFAR

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


# --------------------------------------------------------------------------- CUB-200-2011

def _is_count(text: str) -> bool:
    # str.isdigit alone admits characters such as '\u00b2' that int() rejects.
    return text.isascii() and text.isdigit()


def _read_id_table(path: Path) -> dict[int, str]:
    """Parse a CUB list file of ``<image id> <value>`` lines into ``{id: value}``."""
    if not path.is_file():
        raise FileNotFoundError(f"CUB-200-2011 list file not found: {path}")
    table: dict[int, str] = {}
    for lineno, line in enumerate(read_text(path, "CUB-200-2011 list file").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2 or not _is_count(parts[0]):
            raise ValueError(f"{path}:{lineno}: expected '<image id> <value>', got {line!r}")
        image_id = int(parts[0])
        if image_id in table:
            raise ValueError(f"{path}:{lineno}: image id {image_id} appears twice")
        table[image_id] = parts[1]
    return table


def load_cub200(
    root: str | os.PathLike,
    *,
    train_transform: Transform | None = None,
    test_transform: Transform | None = None,
) -> Split:
    """CUB-200-2011 from its release layout, with the official train/test split.

    Parameters
    ----------
    root : str or path-like
        The ``CUB_200_2011`` folder (holding ``images.txt``, ``train_test_split.txt``,
        ``image_class_labels.txt`` and ``images/``) or the folder that contains it.
        ``classes.txt``, when present, gives the class names.
    train_transform, test_transform : callable, optional
        Applied to the RGB PIL images.

    Returns
    -------
    train, test : FileImageDataset
        Labels 0-based (the files count from 1), in image id order; sample ids are the
        paths of ``images.txt`` (relative to ``images/``).

    Raises
    ------
    FileNotFoundError
        Naming a missing list file, the ``images/`` folder or the first missing image.
    ValueError
        If a path in ``images.txt`` is absolute or leaves ``images/`` (``..``, symlink),
        or the list files disagree on the image ids.
    """
    root = Path(root)
    base = resolve_under(root, "CUB_200_2011") if (root / "CUB_200_2011").is_dir() else root.resolve()
    images_dir = resolve_under(base, "images")
    paths_by_id = _read_id_table(base / "images.txt")
    is_train_by_id = _read_id_table(base / "train_test_split.txt")
    class_by_id = _read_id_table(base / "image_class_labels.txt")
    if not images_dir.is_dir():
        raise FileNotFoundError(f"CUB-200-2011 image folder not found: {images_dir}")
    for other_name, other in (("train_test_split.txt", is_train_by_id),
                              ("image_class_labels.txt", class_by_id)):
        if other.keys() != paths_by_id.keys():
            odd = sorted(other.keys() ^ paths_by_id.keys())
            raise ValueError(f"{base / other_name} and images.txt list different image ids "
                             f"({len(odd)} differ, first {odd[0]})")

    ids = sorted(paths_by_id)
    labels = []
    for image_id in ids:
        value = class_by_id[image_id]
        if not (_is_count(value) and len(value) <= 9 and 1 <= int(value) <= MAX_CLASSES):
            raise ValueError(f"{base / 'image_class_labels.txt'}: image {image_id} has class "
                             f"{value!r}; classes are numbered from 1 to at most {MAX_CLASSES:,}")
        labels.append(int(value) - 1)
        if is_train_by_id[image_id] not in ("0", "1"):
            raise ValueError(f"{base / 'train_test_split.txt'}: image {image_id} has "
                             f"is_train={is_train_by_id[image_id]!r}, expected 0 or 1")
    classes_path = base / "classes.txt"
    class_names = None
    num_classes = max(labels, default=-1) + 1
    if classes_path.is_file():
        names_by_class = _read_id_table(classes_path)
        num_classes = check_class_count(max(num_classes, len(names_by_class)), str(classes_path))
        class_names = [names_by_class.get(c + 1, str(c + 1)) for c in range(num_classes)]

    paths = []
    for image_id in ids:
        relpath = paths_by_id[image_id]
        try:
            path = resolve_under(images_dir, relpath)
        except ValueError as e:
            raise ValueError(f"{base / 'images.txt'}, image {image_id}: {e}") from None
        if not path.is_file():
            raise FileNotFoundError(f"image {path} listed in {base / 'images.txt'} "
                                    f"(image {image_id}) not found")
        paths.append(path)

    def split(flag: str, transform: Transform | None) -> FileImageDataset:
        keep = [k for k, image_id in enumerate(ids) if is_train_by_id[image_id] == flag]
        return FileImageDataset(
            [paths[k] for k in keep], [labels[k] for k in keep],
            [paths_by_id[ids[k]] for k in keep],
            num_classes=num_classes, transform=transform, class_names=class_names)

    return split("1", train_transform), split("0", test_transform)


# --------------------------------------------------------------------------- ImageFolder

def _scan_class_folder(split_root: Path, class_name: str) -> list[tuple[Path, str]]:
    """Image files under ``split_root/class_name``, sorted, as (resolved path, id) pairs."""
    class_dir = resolve_under(split_root, class_name)
    found = []
    # Symlinked files are kept if they stay under the split root.
    for entry in scan_files(class_dir, IMAGE_EXTENSIONS, recursive=True):
        rel = Path(entry.path).relative_to(class_dir.parent).as_posix()
        found.append((resolve_under(split_root, rel), rel))
    return found


def _image_folder_split(
    root: Path, split_name: str, classes: list[str] | None, transform: Transform | None
) -> FileImageDataset:
    split_root = resolve_under(root, split_name)  # a split folder linked out of the root is refused
    with os.scandir(split_root) as entries:
        present = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if classes is None:
        classes = present
        if not classes:
            raise ValueError(f"{split_root} holds no class folders")
    else:
        unknown = sorted(set(present) - set(classes))
        if unknown:
            raise ValueError(f"{split_root} has class folders absent from the training split: "
                             f"{unknown[:5]}")
    paths, labels, sample_ids = [], [], []
    for label, class_name in enumerate(classes):
        if class_name not in present:
            continue
        files = _scan_class_folder(split_root, class_name)
        if not files and split_name == "train":
            raise ValueError(f"class folder {split_root / class_name} holds no images "
                             f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
        for path, rel in files:
            paths.append(path)
            labels.append(label)
            sample_ids.append(f"{split_name}/{rel}")
    return FileImageDataset(paths, labels, sample_ids, num_classes=len(classes),
                            transform=transform, class_names=classes)


def load_imagefolder(
    root: str | os.PathLike,
    *,
    train_transform: Transform | None = None,
    test_transform: Transform | None = None,
) -> Split:
    """An ImageFolder tree: ``root/train/<class>/…/img`` and ``root/test`` (or ``root/val``).

    Classes are the sorted folder names of ``train/``; the test split must use a subset of
    them (a class may have no test images).  Images are read lazily and converted to RGB.

    Parameters
    ----------
    root : str or path-like
        Folder with ``train/`` and ``test/`` (preferred) or ``val/`` subfolders.
    train_transform, test_transform : callable, optional
        Applied to the RGB PIL images.

    Returns
    -------
    train, test : FileImageDataset
        Sample ids are paths relative to ``root``, e.g. ``train/cat/001.png``.

    Raises
    ------
    FileNotFoundError
        If ``root``, ``train/`` or both of ``test/`` and ``val/`` are missing.
    ValueError
        If a training class folder has no images, the test split has a class unknown to
        training, or a symlink leads outside the split folder.
    """
    root = Path(root)
    if not (root / "train").is_dir():
        raise FileNotFoundError(f"ImageFolder training split not found: {root / 'train'}")
    test_name = next((s for s in ("test", "val") if (root / s).is_dir()), None)
    if test_name is None:
        raise FileNotFoundError(f"ImageFolder test split not found: neither {root / 'test'} "
                                f"nor {root / 'val'} exists")
    train = _image_folder_split(root, "train", None, train_transform)
    test = _image_folder_split(root, test_name, train.class_names, test_transform)
    return train, test


# --------------------------------------------------------------------------- entry point

def build_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    train_transform: Transform | None | str = "default",
    test_transform: Transform | None | str = "default",
    image_size: int = 224,
    augment: bool = False,
) -> Split:
    """Load a dataset by name, with default transforms unless told otherwise.

    Parameters
    ----------
    name : str
        One of :data:`DATASET_NAMES`: ``digits`` (bundled, no root), ``fashion-mnist``
        (root defaults to :data:`FASHION_MNIST_ROOT`), ``mnist``, ``cifar10``,
        ``cifar100``, ``cub200``, ``imagefolder``.
    root : str or path-like, optional
        The dataset folder (see each ``load_*`` function for its layout).
    seed : int
        Seed of the train/test split of ``digits``; the other datasets have fixed splits.
    train_transform, test_transform : callable, None or "default"
        ``"default"``: :func:`dprune.data.transforms.default_transform` (to tensor and
        normalise; resize and centre-crop for ``cub200``/``imagefolder``).  ``None``: no
        transform, images as float [0, 1] tensors (PIL sizes vary for photographs).
    image_size : int
        Square side for ``cub200``/``imagefolder`` default transforms.
    augment : bool
        Whether the default training transform augments (see ``default_transform``).

    Returns
    -------
    train, test : LabeledImageDataset

    Raises
    ------
    ValueError
        For an unknown name (listing the valid ones), a root given to ``digits`` or
        missing for a dataset that needs one.
    FileNotFoundError
        Naming the missing folder or file when a layout is incomplete.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if name == "digits" and root is not None:
        raise ValueError(f"the digits dataset is bundled with scikit-learn and takes no root, "
                         f"got root={str(root)!r}")
    if root is None and name == "fashion-mnist":
        root = FASHION_MNIST_ROOT
    if root is None and name != "digits":
        raise ValueError(f"dataset {name!r} needs root= (the folder holding its files)")
    transforms = []
    for which, given in (("train_transform", train_transform), ("test_transform", test_transform)):
        if isinstance(given, str):
            if given != "default":
                raise ValueError(f"{which} must be a callable, None or 'default', got {given!r}")
            given = default_transform(name, train=which == "train_transform",
                                      image_size=image_size, augment=augment)
        elif given is not None and not callable(given):
            raise ValueError(f"{which} must be a callable, None or 'default', got {given!r}")
        transforms.append(given)
    kw = dict(train_transform=transforms[0], test_transform=transforms[1])
    loaders: dict[str, Callable[[], Split]] = {
        "digits": lambda: load_digits_dataset(seed=seed, **kw),
        "fashion-mnist": lambda: load_mnist(root, name="fashion-mnist", **kw),
        "mnist": lambda: load_mnist(root, name="mnist", **kw),
        "cifar10": lambda: load_cifar(root, 10, **kw),
        "cifar100": lambda: load_cifar(root, 100, **kw),
        "cub200": lambda: load_cub200(root, **kw),
        "imagefolder": lambda: load_imagefolder(root, **kw),
    }
    return loaders[name]()
