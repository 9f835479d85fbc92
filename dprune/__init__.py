"""dprune: training-dynamics data pruning (arXiv 2412.10091, "Data Pruning Can Do More").

The public API (imported on first use, so ``import dprune`` stays light)::

    dprune.Recorder        record (indices, logits) from your own training loop
    dprune.open_store      open a recorded trajectory (full or summary store)
    dprune.score_store     scores and flags of a store; dprune.score_arrays for in-memory arrays
    dprune.select, dprune.PruneSpec, dprune.prune_store   selection and the manifest
    dprune.load_manifest   what to train on, with which labels
"""

__version__ = "0.2.0"

_EXPORTS = {
    "Recorder": "dprune.recorder",
    "RecorderError": "dprune.recorder",
    "open_store": "dprune.store",
    "TrajectoryStore": "dprune.store",
    "SummaryStore": "dprune.store",
    "StoreError": "dprune.store",
    "score_store": "dprune.scoring",
    "score_arrays": "dprune.scoring",
    "load_scores": "dprune.scoring",
    "select": "dprune.select",
    "PruneSpec": "dprune.select",
    "prune_store": "dprune.pruning",
    "load_manifest": "dprune.manifest",
    "TrainConfig": "dprune.train.config",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dprune' has no attribute {name!r}")
