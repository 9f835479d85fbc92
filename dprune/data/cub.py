"""CUB-200-2011 from its release layout (list files and ``images/``), with the official split."""
from __future__ import annotations

import os
from pathlib import Path

from dprune.data.base import FileImageDataset, Split, Transform
from dprune.data.paths import resolve_under
from dprune.fileio import read_text
from dprune.labels import MAX_CLASSES, check_class_count

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


def _labels(base: Path, ids: list[int], class_by_id: dict[int, str],
            is_train_by_id: dict[int, str]) -> list[int]:
    """0-based labels in ``ids`` order, checking every class number and train/test flag."""
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
    return labels


def _classes(base: Path, labels: list[int]) -> tuple[int, list[str] | None]:
    """The number of classes and, when ``classes.txt`` is there, their names."""
    classes_path = base / "classes.txt"
    num_classes = max(labels, default=-1) + 1
    if not classes_path.is_file():
        return num_classes, None
    names_by_class = _read_id_table(classes_path)
    num_classes = check_class_count(max(num_classes, len(names_by_class)), str(classes_path))
    return num_classes, [names_by_class.get(c + 1, str(c + 1)) for c in range(num_classes)]


def _image_paths(base: Path, images_dir: Path, ids: list[int], paths_by_id: dict[int, str]) -> list[Path]:
    """The resolved image files in ``ids`` order, each checked to lie under ``images/``."""
    paths = []
    for image_id in ids:
        try:
            path = resolve_under(images_dir, paths_by_id[image_id])
        except ValueError as e:
            raise ValueError(f"{base / 'images.txt'}, image {image_id}: {e}") from None
        if not path.is_file():
            raise FileNotFoundError(f"image {path} listed in {base / 'images.txt'} "
                                    f"(image {image_id}) not found")
        paths.append(path)
    return paths


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
    labels = _labels(base, ids, class_by_id, is_train_by_id)
    num_classes, class_names = _classes(base, labels)
    paths = _image_paths(base, images_dir, ids, paths_by_id)

    def split(flag: str, transform: Transform | None) -> FileImageDataset:
        keep = [k for k, image_id in enumerate(ids) if is_train_by_id[image_id] == flag]
        return FileImageDataset(
            [paths[k] for k in keep], [labels[k] for k in keep],
            [paths_by_id[ids[k]] for k in keep],
            num_classes=num_classes, transform=transform, class_names=class_names)

    return split("1", train_transform), split("0", test_transform)
