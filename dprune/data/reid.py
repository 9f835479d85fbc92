"""Readers for the object re-identification datasets Market-1501, MSMT17 and VeRi-776.

They follow the conventions of torchreid, fast-reid and the BoT strong baseline, so that
numbers computed here compare with published ones:

- a record is ``(relpath, pid, camid)``; ``relpath`` is relative to the dataset folder
  (:attr:`ReIDDataset.root`), so sample ids do not depend on where the dataset lives or on
  whether the caller passed the folder or its parent;
- cameras are 0-based;
- training identities are relabelled ``0..n-1`` in increasing order of the original id
  (the mapping is kept in ``pid_map``); query and gallery keep the original ids, which
  the evaluation only compares with each other;
- Market-1501: junk images (pid -1) are dropped everywhere and distractors (pid 0) are
  kept in the gallery only, where they count as wrong matches.

Every path, whether found by listing a folder or read from a list file, is checked to lie
under the dataset folder (:func:`dprune.data.paths.resolve_under`): list files come with
downloaded datasets and a ``../`` line or a symlink must not make a loader read elsewhere.

Legend: N samples of one split.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..fileio import atomic_write_text, read_text
from .base import LabeledImageDataset, Transform, read_rgb
from .paths import resolve_under
from .reid_base import (IMAGE_EXTENSIONS, ListedFileChecker, ReIDDataset, ReIDRecord, find_dataset_dir,
                        parse_folder, pid_cam_parser, relabel)

__all__ = ["IMAGE_EXTENSIONS", "REID_READERS", "ReIDDataset", "ReIDImageDataset", "ReIDRecord",
           "build_reid_dataset", "export_list", "read_market1501", "read_msmt17", "read_veri776"]


# --------------------------------------------------------------------------- Market-1501

# Identities and cameras in file names and lists have at most 9 digits (real ones have 4): a
# longer number is no real id, and one of 20 digits would overflow the int64 labels.
_MARKET_NESTED = "Market-1501-v15.09.15"
_parse_market = pid_cam_parser(r"([-\d]{1,10})_c(\d)")


def read_market1501(root: str | os.PathLike) -> ReIDDataset:
    """Read Market-1501 (Zheng et al., ICCV 2015).

    Parameters
    ----------
    root : str or path-like
        The folder holding ``bounding_box_train/``, ``query/`` and ``bounding_box_test/``,
        or its parent holding ``Market-1501-v15.09.15/``.

    Returns
    -------
    ReIDDataset
        Names ``PPPP_cCsS_FFFFFF_BB.jpg`` give pid ``PPPP`` and camera ``C - 1``.  Junk
        (pid -1) is dropped from every split; distractors (pid 0) are kept in the gallery
        only.

    Raises
    ------
    ValueError
        Naming the first missing folder or the first image name that does not parse.
    """
    name = "Market-1501"
    base = find_dataset_dir(root, "bounding_box_train", (_MARKET_NESTED,), name)
    splits = {}
    for split, folder in (("train", "bounding_box_train"), ("query", "query"),
                          ("gallery", "bounding_box_test")):
        records = parse_folder(base, folder, name, _parse_market)
        min_pid = 0 if split == "gallery" else 1
        splits[split] = [r for r in records if r.pid >= min_pid]
    train, pid_map = relabel(splits["train"])
    return ReIDDataset("market1501", base, train, splits["query"], splits["gallery"], pid_map)


# --------------------------------------------------------------------------- MSMT17

# (list-file folder, train image folder, test image folder), in torchreid's search order.
_MSMT_VERSIONS = (("MSMT17_V1", "train", "test"), ("MSMT17_V2", "mask_train_v2", "mask_test_v2"))
_MSMT_NAME = re.compile(r"(\d{1,9})_(\d{1,9})_(\d{1,9})_")


def _read_msmt_list(base: Path, image_dir: str, list_name: str,
                    checker: ListedFileChecker) -> list[ReIDRecord]:
    list_path = base / list_name
    if not list_path.is_file():
        raise ValueError(f"MSMT17: missing list file {list_name} under {base}")
    records = []
    text = read_text(list_path, "MSMT17 list file")
    for lineno, line in enumerate(text.splitlines(), 1):
        where = f"MSMT17: {list_path}:{lineno}"
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not re.fullmatch(r"\d{1,9}", fields[1]):
            raise ValueError(f"{where}: expected 'relpath pid', got {line.strip()!r}")
        if fields[0].startswith(("/", "\\")) or re.match(r"[A-Za-z]:", fields[0]):
            raise ValueError(f"{where}: refusing absolute path {fields[0]!r}")
        rel = f"{image_dir}/{fields[0]}"
        m = _MSMT_NAME.match(fields[0].rsplit("/", 1)[-1])
        if m is None or int(m.group(3)) < 1:
            raise ValueError(f"{where}: cannot parse the camera from file name {fields[0]!r}")
        checker.check(rel, where)
        records.append(ReIDRecord(rel, int(fields[1]), int(m.group(3)) - 1))
    return records


def read_msmt17(root: str | os.PathLike, *, combine_train_val: bool = False) -> ReIDDataset:
    """Read MSMT17 (Wei et al., CVPR 2018), V1 or V2 (faces blurred) layout.

    Parameters
    ----------
    root : str or path-like
        The ``MSMT17_V1`` or ``MSMT17_V2`` folder (holding ``list_train.txt``,
        ``list_val.txt``, ``list_query.txt``, ``list_gallery.txt`` and the image folders
        ``train/`` + ``test/`` for V1, ``mask_train_v2/`` + ``mask_test_v2/`` for V2), or
        its parent (V1 is preferred when both are there, as in torchreid).
    combine_train_val : bool
        Also train on ``list_val.txt`` (the same identities as ``list_train.txt``).  Off
        by default: published results train on ``list_train.txt`` only.

    Returns
    -------
    ReIDDataset
        List lines ``0000/0000_000_01_0303morning_0015_0.jpg 0`` give the pid; the camera
        is the third field of the file name minus one.

    Raises
    ------
    ValueError
        Naming the missing folder or list file, an unparsable line, a missing image or a
        path that leaves the dataset folder.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise ValueError(f"MSMT17: dataset root {root_path} is not a folder")
    for version, train_dir, test_dir in _MSMT_VERSIONS:
        if (root_path / version).is_dir():
            base = (root_path / version).resolve()
            break
        if root_path.resolve().name == version or (root_path / train_dir).is_dir():
            base = root_path.resolve()
            break
    else:
        raise ValueError(
            f"MSMT17: no MSMT17_V1/ or MSMT17_V2/ folder under {root_path}, and it has "
            f"neither train/ (V1) nor mask_train_v2/ (V2) itself")
    for folder in (train_dir, test_dir):
        if not (base / folder).is_dir():
            raise ValueError(f"MSMT17: missing folder {folder}/ under {base}")

    checker = ListedFileChecker(base)
    train = _read_msmt_list(base, train_dir, "list_train.txt", checker)
    if combine_train_val:
        train += _read_msmt_list(base, train_dir, "list_val.txt", checker)
    query = _read_msmt_list(base, test_dir, "list_query.txt", checker)
    gallery = _read_msmt_list(base, test_dir, "list_gallery.txt", checker)
    train, pid_map = relabel(train)
    return ReIDDataset("msmt17", base, train, query, gallery, pid_map)


# --------------------------------------------------------------------------- VeRi-776

_parse_veri = pid_cam_parser(r"(\d{1,9})_c(\d{1,9})_")


def read_veri776(root: str | os.PathLike) -> ReIDDataset:
    """Read VeRi-776 (Liu et al., ICME 2016 / ECCV 2016).

    Parameters
    ----------
    root : str or path-like
        The folder holding ``image_train/``, ``image_query/`` and ``image_test/``, or its
        parent holding ``VeRi/``.

    Returns
    -------
    ReIDDataset
        Names ``0001_c001_00016450_0.jpg`` give pid 1 and camera 0.  As in fast-reid, the
        gallery is ``image_test/``, which also holds the query images; the evaluation
        removes them (same identity, same camera).

    Raises
    ------
    ValueError
        Naming the first missing folder or the first image name that does not parse.
    """
    name = "VeRi-776"
    base = find_dataset_dir(root, "image_train", ("VeRi",), name)
    train = parse_folder(base, "image_train", name, _parse_veri)
    query = parse_folder(base, "image_query", name, _parse_veri)
    gallery = parse_folder(base, "image_test", name, _parse_veri)
    train, pid_map = relabel(train)
    return ReIDDataset("veri776", base, train, query, gallery, pid_map)


# --------------------------------------------------------------------------- public API

REID_READERS: dict[str, Callable[..., ReIDDataset]] = {
    "market1501": read_market1501,
    "msmt17": read_msmt17,
    "veri776": read_veri776,
}


def build_reid_dataset(name: str, root: str | os.PathLike, **kwargs) -> ReIDDataset:
    """Read the ReID dataset ``name`` from ``root``.

    Parameters
    ----------
    name : str
        One of ``market1501``, ``msmt17``, ``veri776``.
    root : str or path-like
        As accepted by the reader (:func:`read_market1501`, :func:`read_msmt17`,
        :func:`read_veri776`).
    **kwargs
        Reader options (``combine_train_val`` for MSMT17).
    """
    reader = REID_READERS.get(name)
    if reader is None:
        raise ValueError(f"unknown ReID dataset {name!r}; valid names: {', '.join(REID_READERS)}")
    return reader(root, **kwargs)


class ReIDImageDataset(LabeledImageDataset):
    """A torch ``Dataset`` over one split; ``__getitem__(i)`` is ``(image, pid, camid, i)``.

    The index ``i`` travels with the sample so the recorder can file its logits under it
    whatever the sampler (P x K identity sampling repeats and skips images).
    :class:`dprune.data.indexed.IndexedDataset` can still wrap it: it keeps the first two
    items.

    Parameters
    ----------
    records : sequence of ReIDRecord (or ``(relpath, pid, camid)`` tuples), length N
        Pids must be non-negative (the readers guarantee it).
    root : str or path-like
        The folder the relative paths are relative to (:attr:`ReIDDataset.root`).
    transform : callable, optional
        Applied to the RGB PIL image; the result is converted to float32 ``[3, H, W]``.

    Attributes
    ----------
    labels : np.ndarray, int64 [N]
        Pids.
    camids : np.ndarray, int64 [N]
    sample_ids : list[str], length N
        Relative paths.
    num_classes : int
        1 + the largest pid (the number of identities for a relabelled train split).
    """

    def __init__(self, records: Sequence[ReIDRecord | tuple[str, int, int]],
                 root: str | os.PathLike, transform: Transform | None = None) -> None:
        records = [ReIDRecord(*r) for r in records]
        if not records:
            raise ValueError("a ReID image dataset needs at least one record")
        labels_N = np.array([r.pid for r in records], dtype=np.int64)
        if labels_N.min() < 0:
            raise ValueError(f"pids must be non-negative, got {labels_N.min()} "
                             f"(drop junk images first)")
        super().__init__(labels_N, [r.relpath for r in records],
                         num_classes=int(labels_N.max()) + 1, in_channels=3,
                         transform=transform)
        self.camids = np.array([r.camid for r in records], dtype=np.int64)
        self.root = Path(root)

    def load_image(self, i: int) -> Image.Image:
        return read_rgb(resolve_under(self.root, self.sample_ids[i]), self.sample_ids[i])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, int]:
        """Return ``(image float32 [3, H, W], pid, camid, i)``."""
        image, pid = super().__getitem__(i)
        return image, pid, int(self.camids[i]), int(i)


def export_list(records: Sequence[ReIDRecord | tuple[str, int, int]], path: str | os.PathLike,
                *, relative_to: str | None = None) -> None:
    """Write ``relpath pid`` lines, the list format of MSMT17 and of most ReID toolkits.

    Parameters
    ----------
    records : sequence of ReIDRecord (or ``(relpath, pid, camid)`` tuples)
        Written in order, with their pids as given (training labels for a train split).
    path : str or path-like
        Output file, written atomically.
    relative_to : str, optional
        A leading folder to strip from every path, e.g. ``"train"`` for MSMT17 V1, whose
        list files are relative to the image folder.

    Raises
    ------
    ValueError
        If a path contains whitespace (it would split the line) or does not start with
        ``relative_to``.
    """
    prefix = None if relative_to is None else relative_to.rstrip("/") + "/"
    lines = []
    for relpath, pid, _ in records:
        if re.search(r"\s", relpath):
            raise ValueError(f"cannot write {relpath!r}: whitespace would split the list line")
        if prefix is not None:
            if not relpath.startswith(prefix):
                raise ValueError(f"{relpath!r} is not under {relative_to!r}")
            relpath = relpath[len(prefix):]
        lines.append(f"{relpath} {int(pid)}\n")
    atomic_write_text(Path(path), "".join(lines))
