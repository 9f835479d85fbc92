"""What a run folder holds, and which output paths would overwrite it.

A ``dprune train --out`` folder (a *training run*) holds :data:`TRAIN_FILES`; a ``dprune run
--out`` folder (a *pipeline*) holds :data:`PIPELINE_FILES` and a training run per stage.
Commands that write a file a user names (``dprune prune -o``, ``--export-list``, ``dprune
report``) check it here first, so no output lands on a file a run owns.
"""
from __future__ import annotations

from pathlib import Path

from .store import META, is_store_file

CHECKPOINT = "checkpoint.pt"
DS_CHECKPOINT = "ds_checkpoint"
MANIFEST = "manifest.json"
TRAJECTORY = "trajectory"
SCORES = "scores.npz"
TRAIN_FILES = (CHECKPOINT, DS_CHECKPOINT, "metrics.json", TRAJECTORY, MANIFEST, "manifest.npz", "label_noise.npz")
PIPELINE = "pipeline.json"
PIPELINE_FILES = (PIPELINE, "report.md", "report.json", "report.html", MANIFEST, "manifest.npz", "kept.tsv",
                  "train_list.txt", "full", "pruned", "prune-in-run", "random-in-run", "full-same-cost")


def _owner(directory: Path) -> tuple[str, tuple[str, ...]] | None:
    """``(what, its files)`` when ``directory`` is a training run or a pipeline folder."""
    if (directory / PIPELINE).exists():
        return "dprune run folder", PIPELINE_FILES
    if (directory / CHECKPOINT).exists() or (directory / DS_CHECKPOINT).exists() \
            or (directory / TRAJECTORY / META).exists():
        return "training run", TRAIN_FILES
    return None


def check_output_path(path, what: str, *, not_same_as=(), run_files: bool = True) -> Path:
    """Refuse an output path that is a directory, or would overwrite a file of a store or a run.

    ``run_files=False`` is for a run writing its own files (its manifest): only the store's
    files are protected then.  ``not_same_as``: other outputs of the same command (with their ``.npz`` companions),
    which ``path`` must not overwrite either.  A manifest's arrays go to the ``.npz`` beside
    it, so that name is checked too.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory; give a file name")
    resolved = path.resolve()
    for p in (resolved, resolved.with_suffix(".npz")):
        if is_store_file(p) or (p.name == SCORES and (p.parent / META).exists()):
            raise ValueError(f"{what} {path} would overwrite {p.name} of the trajectory store in {p.parent}; "
                             f"choose another name")
        owner = _owner(p.parent) if run_files else None
        if owner is not None and p.name in owner[1]:
            raise ValueError(f"{what} {path} would overwrite {p.name} of the {owner[0]} {p.parent}; "
                             f"choose another name")
    for other in not_same_as:
        other = Path(other).resolve()
        if resolved in (other, other.with_suffix(".npz")):
            raise ValueError(f"{what} {path} is also the path of another output ({other}); choose another name")
    return path
