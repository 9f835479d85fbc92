"""One writer per directory: an exclusive ``flock`` held for the writer's whole life.

A run directory (``dprune train --out``) and a trajectory store are each written by one
process at a time.  :class:`DirLock` takes ``DIR/.dprune.lock`` with ``flock(LOCK_EX |
LOCK_NB)``; a second writer is refused at once with a one-line error naming the holder's
pid, host and command.  The kernel drops the lock when the holder exits or is killed, so a
lock can never be left behind by a dead process (no stale-lock cleanup, no timeouts).

Once it holds the lock, a writer removes the ``.*.tmp`` files a killed writer left in the
directory: nobody else can be writing them.

Readers take no lock: they read a consistent snapshot (see the stores), so ``dprune score``
or ``inspect`` work while training goes on.

:func:`watch_parent` is for the workers of a launcher (torchrun, deepspeed): when the
launcher dies (``kill -9`` of its process group leaves the workers in their own sessions),
the workers stop instead of writing on beside a rerun of the same command.
"""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from .fileio import parse_json

LOCK_FILE = ".dprune.lock"


class LockedError(OSError):
    """The directory is held by another writer."""


class DirLock:
    """An exclusive lock on ``directory`` for the life of this object (or until :meth:`release`).

    Parameters
    ----------
    directory : path
        Created if missing.
    purpose : str
        What the holder is doing, shown to a refused writer.
    """

    def __init__(self, directory, purpose: str):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / LOCK_FILE
        f = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = _describe(f.read(4096))  # the holder writes one short line; more is not ours
            f.close()
            raise LockedError(f"{self.directory} is in use by another writer ({holder}); wait for it to finish or "
                              f"stop it (a leftover worker of a killed launcher stops by itself within seconds)") \
                from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
                            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": shlex.join(sys.argv)}))
        f.flush()
        self._file = f
        remove_temp_files(self.directory)

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None

    def __enter__(self) -> "DirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(text: str) -> str:
    try:
        h = parse_json(text, "lock file", LOCK_FILE)
        return f"pid {h['pid']} on {h['host']} since {h['since']}: {h['purpose']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def remove_temp_files(directory) -> list[Path]:
    """Delete the ``.*.tmp`` files in ``directory`` (left by a killed writer); return them."""
    removed = []
    for p in Path(directory).glob(".*.tmp"):
        try:
            p.unlink()
            removed.append(p)
        except (FileNotFoundError, IsADirectoryError):
            pass
    return removed


def watch_parent(interval: float = 0.5) -> None:
    """Stop this process (SIGTERM, then SIGKILL) once its parent has died.

    For workers started by a launcher: their parent is the launcher's agent, and when it is
    killed they are re-parented.  A daemon thread compares ``os.getppid()`` with the parent
    at start; the check costs one system call per interval.
    """
    parent = os.getppid()
    if parent == 1:
        return

    def watch():
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                sys.stderr.write(f"dprune: the launcher (pid {parent}) is gone; stopping this worker\n")
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="dprune-parent-watch", daemon=True).start()
