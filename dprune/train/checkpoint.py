"""A training run's folder: its lock, a restart's wipe, and what a checkpoint must match to be resumed.

The engines (:mod:`.engines`) write and read the checkpoint's files; the trainer's own part
of it (:meth:`.loop.Trainer.state_dict`) records the run's configuration
(:func:`run_identity`), which a resumed run must match field by field (:func:`config_changes`).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..distributed import World, broadcast_object, close_world
from ..locking import DirLock
from ..rundir import TRAIN_FILES
from ..store import StoreError
from .config import TrainConfig

# Fields a resumed run may change: where things are, how much is printed, how often the
# test set is evaluated, how many epochs there are in all, and how the logits reach the store.
RESUME_FREE = {"out", "data_root", "epochs", "progress", "num_workers", "eval_every", "device", "record_writes"}
# The checkpoint's layout; 2: the selection of prune-in-run is the hook's, not TrainConfig's.
CHECKPOINT_FORMAT = 2


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that belongs to another configuration."""


def run_identity(cfg: TrainConfig, prune) -> dict:
    """What a checkpoint records of the run's configuration (``prune``: the prune-in-run hook or None)."""
    return {**cfg.flat(), "prune_in_run": None if prune is None else prune.identity()}


def config_changes(saved: dict, now: dict) -> list[str]:
    """``FIELD: saved -> now`` for every field of :func:`run_identity` that matters and differs."""
    return [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in now
            if k not in RESUME_FREE and saved.get(k, now[k]) != now[k]]


def check_resume(out: Path, state: dict, now: dict, manifest_digest: str | None) -> None:
    """Refuse the checkpoint ``state`` unless it is of the configuration ``now`` (naming the fields)."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{out} holds a checkpoint of an older dprune (format {state.get('format', 1)}, "
                              f"now {CHECKPOINT_FORMAT}); pass --restart to start over")
    changes = config_changes(state["config"], now)
    if manifest_digest is not None and state.get("manifest_digest") != manifest_digest:
        changes.append(f"manifest content: {str(state.get('manifest_digest'))[:12]} -> {manifest_digest[:12]}")
    if changes:
        raise CheckpointError(f"{out} holds a run with another configuration ({'; '.join(changes)}); "
                              f"rerun with its settings, or pass --restart to start a new run there")


def take_run_lock(world: World, out: Path) -> DirLock | None:
    """Rank 0 takes ``out``'s lock (every rank raises :class:`StoreError` if it cannot)."""
    lock, error = None, None
    if world.is_main:
        if out.exists() and not out.is_dir():
            error = f"--out {out} exists and is not a directory"
        else:
            try:
                lock = DirLock(out, "dprune train")
            except OSError as e:
                error = str(e)
    error = broadcast_object(world, error)
    if error:
        close_world(world)
        raise StoreError(error)
    return lock


def wipe(out: Path) -> None:
    """Delete what an earlier run left in ``out`` (``restart=True``)."""
    for name in TRAIN_FILES:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
