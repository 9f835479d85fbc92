"""Finding a dataset's files without leaving its root, and the one rule of what is an image file.

List files (CUB's ``images.txt``, ReID lists, manifests) come with downloaded datasets, so
they are data from strangers: a line such as ``../../home/me/.ssh/id_rsa`` or a symlink to
``/etc`` must not make a loader read, or a training run expose, files outside the dataset.
The same holds for the folders themselves: a FIFO named ``zz.png`` would block a reader
forever, and a tree nested thousands of levels deep would exhaust a recursive walk.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath


def resolve_under(root: str | os.PathLike, relpath: str) -> Path:
    """Resolve ``relpath`` against ``root``, refusing anything that ends up outside ``root``.

    Parameters
    ----------
    root : str or path-like
        The dataset folder every listed file must live under.  It may itself be a
        symlink; it is resolved first.
    relpath : str
        A relative path as written in a list file, ``/``-separated.

    Returns
    -------
    pathlib.Path
        The fully resolved path (symlinks followed).  The file need not exist: callers
        check existence and report the list line it came from.

    Raises
    ------
    ValueError
        If ``relpath`` is empty, contains a NUL byte, is absolute (POSIX or Windows
        style), or resolves outside ``root`` through ``..`` components or a symlink
        (to a file or to a folder on the way) that points outside ``root``.
    """
    if not isinstance(relpath, str):
        raise ValueError(f"relative path must be a str, got {type(relpath).__name__}: {relpath!r}")
    if relpath == "" or "\x00" in relpath:
        raise ValueError(f"invalid relative path {relpath!r} under {root}")
    if PurePosixPath(relpath).is_absolute() or PureWindowsPath(relpath).is_absolute() \
            or PureWindowsPath(relpath).drive:
        raise ValueError(f"refusing absolute path {relpath!r}: paths must be relative to {root}")
    root_resolved = Path(root).resolve()
    # resolve() follows every symlink on the way, so a link anywhere in the chain that
    # points out of the root is caught by the containment check below.
    target = (root_resolved / relpath).resolve()
    if not target.is_relative_to(root_resolved):
        raise ValueError(
            f"refusing path {relpath!r}: it resolves to {target}, outside the dataset root "
            f"{root_resolved} (through '..' or a symlink)")
    return target


TREE_MAX_DEPTH = 32
"""Deepest folder a dataset scan descends to below the folder it starts from.  Real trees nest
one or two levels under a class folder; the budget keeps a hostile tree from making the scan
walk without end (symlinked folders are never followed, so there are no cycles)."""


def is_regular_file(entry: os.DirEntry) -> bool:
    """The rule every dataset scan applies: only a regular file (after following a symlink) can
    be an image.  FIFOs, sockets and devices are skipped, as are entries that vanish meanwhile."""
    try:
        return entry.is_file()  # S_ISREG of the entry, or of its target for a symlink
    except OSError:
        return False


def scan_files(folder: str | os.PathLike, extensions: Sequence[str], *, recursive: bool) -> list[os.DirEntry]:
    """The regular files of ``folder`` whose lower-case names end with one of ``extensions``.

    Hidden entries (``.name``) are skipped; with ``recursive``, sub-folders are scanned too (not
    symlinked ones), at most :data:`TREE_MAX_DEPTH` levels deep.  The order is ``os.walk``'s:
    each folder's files sorted by name, then its sub-folders, in name order, depth first.

    Raises
    ------
    ValueError
        If the tree nests deeper than :data:`TREE_MAX_DEPTH`.
    OSError
        If a folder cannot be listed.
    """
    suffixes = tuple(extensions)
    found: list[os.DirEntry] = []
    stack = [(os.fspath(folder), 0)]
    while stack:
        path, depth = stack.pop()
        with os.scandir(path) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        found += [e for e in entries if e.name.lower().endswith(suffixes) and is_regular_file(e)]
        if recursive:
            subdirs = [e for e in entries if e.is_dir(follow_symlinks=False)]
            if subdirs and depth >= TREE_MAX_DEPTH:
                raise ValueError(f"{subdirs[0].path} is nested more than {TREE_MAX_DEPTH} folders below {folder}")
            stack += [(e.path, depth + 1) for e in reversed(subdirs)]
    return found
