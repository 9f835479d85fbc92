"""Scoring: trajectory -> per-sample importance scores and flags.

``score_arrays`` scores in-memory arrays; ``score_store`` streams a
:class:`~dprune.store.TrajectoryStore` in sample chunks.  Both return plain numpy arrays [N]:
one per requested scorer (higher = more important, NaN = no score) plus the flags
``soft_argmax``, ``p_label``, ``p_max``, ``margin``, ``mislabel``, ``outlier``,
``nonfinite`` and ``n_observed``.
"""
from .scorers import SCORERS, mislabel_flags, outlier_flags
from .stats import TrajectoryStats, compute_stats
from .api import (
    DEFAULT_PARAMS,
    FLAGS,
    METHODS,
    check_methods,
    merge_params,
    load_scores,
    save_scores,
    score_arrays,
    score_store,
)

__all__ = [
    "SCORERS", "METHODS", "FLAGS", "DEFAULT_PARAMS", "TrajectoryStats", "compute_stats",
    "check_methods", "merge_params", "score_arrays", "score_store", "save_scores", "load_scores",
    "mislabel_flags", "outlier_flags",
]
