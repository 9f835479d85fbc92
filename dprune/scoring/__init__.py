"""Scoring: trajectory -> per-sample importance scores and flags.

``score_arrays`` scores in-memory arrays; ``score_store`` streams a store in sample chunks;
``load_or_score`` reuses ``scores.npz`` while it is current.  All return plain numpy arrays
[N]: one per requested scorer (higher = more important, NaN = no score) plus the flags
``soft_argmax``, ``p_label``, ``p_max``, ``margin``, ``mislabel``, ``outlier``,
``nonfinite`` and ``n_observed``.
"""
from .api import FLAG_METHODS, FLAGS, METHODS, check_methods, score_arrays, score_store
from .flags import compute_flags, mislabel_flags, outlier_flags
from .params import DEFAULT_PARAMS, PARAMS, merge_params, parse_params
from .scorers import SCORERS
from .scores_file import SCORES_FILE, load_or_score, load_scores, save_scores, scores_status
from .stats import TrajectoryStats, compute_stats

__all__ = [
    "SCORERS", "METHODS", "FLAG_METHODS", "FLAGS", "DEFAULT_PARAMS", "PARAMS", "SCORES_FILE", "TrajectoryStats",
    "compute_stats",
    "check_methods", "merge_params", "parse_params", "score_arrays", "score_store", "save_scores", "load_scores",
    "load_or_score", "scores_status", "compute_flags", "mislabel_flags", "outlier_flags",
]
