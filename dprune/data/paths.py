"""Resolving relative paths read from dataset list files without leaving the dataset root.

List files (CUB's ``images.txt``, ReID lists, manifests) come with downloaded datasets, so
they are data from strangers: a line such as ``../../home/me/.ssh/id_rsa`` or a symlink to
``/etc`` must not make a loader read, or a training run expose, files outside the dataset.
"""
from __future__ import annotations

import os
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
