"""The ReID records and datasets, and the file checks every layout reader shares.

Every path, whether found by listing a folder or read from a list file, is checked to lie
under the dataset folder (:func:`dprune.data.paths.resolve_under`).
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from .paths import resolve_under, scan_files

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class ReIDRecord(NamedTuple):
    """One image of a ReID split."""

    relpath: str
    """Path relative to the dataset folder, ``/``-separated."""
    pid: int
    """Identity: the training label in the train split, the original id elsewhere."""
    camid: int
    """Camera, 0-based."""


@dataclass
class ReIDDataset:
    """The three splits of a ReID dataset, as read from disk.

    Attributes
    ----------
    name : str
        ``market1501``, ``msmt17`` or ``veri776``.
    root : pathlib.Path
        The resolved dataset folder every ``relpath`` is relative to (for example
        ``.../Market-1501-v15.09.15`` or ``.../MSMT17_V1``).
    train, query, gallery : list[ReIDRecord]
        Train pids are relabelled ``0..num_train_pids-1``; query and gallery pids are the
        original ids (0 = distractor, gallery only).
    pid_map : dict[int, int]
        Original training id -> training label.
    """

    name: str
    root: Path
    train: list[ReIDRecord]
    query: list[ReIDRecord]
    gallery: list[ReIDRecord]
    pid_map: dict[int, int] = field(default_factory=dict)

    @property
    def num_train_pids(self) -> int:
        """Number of training identities (= number of classes of the train split)."""
        return len(self.pid_map)

    @property
    def num_cams(self) -> int:
        """1 + the largest camera index over all splits (a size for camera embeddings)."""
        cams = [r.camid for split in (self.train, self.query, self.gallery) for r in split]
        return max(cams) + 1 if cams else 0

    def __repr__(self) -> str:
        return (f"ReIDDataset({self.name}, root={str(self.root)!r}, train={len(self.train)} "
                f"images/{self.num_train_pids} ids, query={len(self.query)}, "
                f"gallery={len(self.gallery)}, cams={self.num_cams})")


# --------------------------------------------------------------------------- file checks

def scan_folder(root: Path, folder: str, dataset: str) -> list[str]:
    """Relative paths of the images directly inside ``root/folder``, sorted by name.

    Other files (Market-1501 ships a ``Thumbs.db``), hidden ones, anything but a regular file
    (:func:`~dprune.data.paths.is_regular_file`) and sub-folders are ignored.
    """
    path = root / folder
    if not path.is_dir():
        raise ValueError(f"{dataset}: missing folder {folder}/ under {root}")
    resolve_under(root, folder)
    relpaths = []
    for entry in scan_files(path, IMAGE_EXTENSIONS, recursive=False):
        rel = f"{folder}/{entry.name}"
        # Only a symlink can point out of a folder already known to lie under root.
        if entry.is_symlink():
            resolve_under(root, rel)
        relpaths.append(rel)
    if not relpaths:
        raise ValueError(f"{dataset}: no images ({', '.join(IMAGE_EXTENSIONS)}) in {path}")
    return sorted(relpaths)


class ListedFileChecker:
    """Checks that list-file paths exist under root, resolving each folder only once.

    Resolving every one of MSMT17's 126k paths costs seconds; a folder resolved under root
    plus an ``lstat`` of the file (a symlinked file is resolved in full) is as safe.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._folders: dict[str, Path] = {}

    def check(self, relpath: str, where: str) -> None:
        folder, _, name = relpath.rpartition("/")
        if name in ("", ".", ".."):
            raise ValueError(f"{where}: {relpath!r} does not name an image file")
        try:
            base = self._folders.get(folder)
            if base is None:
                base = resolve_under(self.root, folder or ".")
                self._folders[folder] = base
            mode = os.lstat(base / name).st_mode
            if stat.S_ISLNK(mode):
                mode = os.stat(resolve_under(self.root, relpath)).st_mode
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        except FileNotFoundError:
            raise ValueError(f"{where}: image not found: {self.root / relpath}") from None
        if not stat.S_ISREG(mode):
            raise ValueError(f"{where}: not a file: {self.root / relpath}")


def find_dataset_dir(root: str | os.PathLike, marker: str, nested: Sequence[str],
                      dataset: str) -> Path:
    """``root`` if it contains ``marker``, else the first ``root/n`` in ``nested`` that does."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{dataset}: dataset root {root} is not a folder")
    for candidate in (root, *(root / n for n in nested)):
        if (candidate / marker).exists():
            return candidate.resolve()
    # Nothing recognisable: report against the root itself, which names the first
    # missing folder.
    return root.resolve()


def relabel(records: list[ReIDRecord]) -> tuple[list[ReIDRecord], dict[int, int]]:
    pid_map = {pid: label for label, pid in enumerate(sorted({r.pid for r in records}))}
    return [r._replace(pid=pid_map[r.pid]) for r in records], pid_map




def pid_cam_parser(pattern: str) -> Callable[[str], tuple[int, int] | None]:
    """A parser of file names whose ``pattern`` matches the pid (group 1), then the 1-based camera.

    The parser returns ``(pid, camera - 1)``, or None for a name that does not match or has
    camera 0.
    """
    regex = re.compile(pattern)

    def parse(name: str) -> tuple[int, int] | None:
        m = regex.match(name)
        if m is None or int(m.group(2)) < 1:
            return None
        return int(m.group(1)), int(m.group(2)) - 1

    return parse


def parse_folder(root: Path, folder: str, dataset: str,
                  parse: Callable[[str], tuple[int, int] | None]) -> list[ReIDRecord]:
    records = []
    for rel in scan_folder(root, folder, dataset):
        name = rel.rsplit("/", 1)[1]
        parsed = parse(name)
        if parsed is None:
            raise ValueError(f"{dataset}: cannot parse identity and camera from file name "
                             f"{root / rel}")
        records.append(ReIDRecord(rel, *parsed))
    return records
