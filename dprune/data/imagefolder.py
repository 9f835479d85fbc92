"""ImageFolder trees: ``root/train/<class>/…/img`` and ``root/test`` (or ``root/val``)."""
from __future__ import annotations

import os
from pathlib import Path

from dprune.data.base import FileImageDataset, Split, Transform
from dprune.data.paths import resolve_under, scan_files

#: File endings (lower case) an ImageFolder scan treats as images; others are skipped.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

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
