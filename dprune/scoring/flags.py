"""Flags: which samples look mislabelled or flat, computed once, with the thresholds of ``params``.

:func:`compute_flags` is the only place a flag is decided; ``scores.npz`` stores its result
and the parameters it used, and selection (:mod:`dprune.select`) reads the flags from
there.  The rules are also exposed as small functions over arrays, for users.
"""
from __future__ import annotations

import math

import numpy as np

from .params import check_param


def mislabel_flags(soft_argmax_N, p_max_N, labels_N, *, min_confidence: float = 0.5):
    """The paper's rule: the soft label disagrees with the given label, and is confident about it.

    Flagged when ``soft_argmax != label`` and ``p_max >= min_confidence``.  With
    ``min_confidence=0`` this is the plain rule (argmax deviates from the label).  Works on
    numpy arrays or torch tensors; unobserved samples (argmax -1) are never flagged.
    """
    min_confidence = check_param("mislabel", "min_confidence", min_confidence)
    return (soft_argmax_N >= 0) & (soft_argmax_N != labels_N) & (p_max_N >= min_confidence)


def normalised_entropy(entropy_N, n_classes: int):
    """H / log C, in [0, 1] for finite entropies: the flatness the outlier rules compare; 0 for
    C = 1 (one class leaves no uncertainty).  The one place this rule is written."""
    if n_classes < 2:
        return entropy_N * 0.0
    return entropy_N / math.log(n_classes)


def outlier_flags(entropy_N, margin_N, n_classes: int, *, entropy_threshold: float = 0.9, margin_threshold: float = 0.1):
    """A flat soft label: ``entropy / log(C) >= entropy_threshold`` and ``margin <= margin_threshold``.

    ``margin`` is top-1 minus top-2 probability of the soft label.  Such samples gave the
    model no consistent signal over the trajectory (ambiguous, corrupt or off-distribution
    images).  Never flagged when C = 1 or when the entropy is NaN.
    """
    entropy_threshold = check_param("outlier", "entropy_threshold", entropy_threshold)
    margin_threshold = check_param("outlier", "margin_threshold", margin_threshold)
    if n_classes < 2:
        return entropy_N != entropy_N  # all False, same type as the input
    return (normalised_entropy(entropy_N, n_classes) >= entropy_threshold) & (margin_N <= margin_threshold)


def compute_flags(out: dict[str, np.ndarray], labels_N: np.ndarray, n_classes: int, params: dict,
                  threshold: dict | None = None) -> dict[str, np.ndarray]:
    """Add the flags to a scores dict holding the per-sample soft-label arrays.

    Needs ``soft_argmax``, ``p_max``, ``margin`` and ``entropy_raw`` (the entropy of every
    observed sample, finite or not; removed from ``out``).  Adds ``mislabel`` and ``outlier``;
    with ``threshold`` (a store's threshold samples: ``{"class", "indices", "labels"}``) also
    ``threshold_sample``, ``threshold_label`` and, when ``aum`` was scored, ``aum_mislabel``.
    """
    out["mislabel"] = np.asarray(mislabel_flags(out["soft_argmax"], out["p_max"], labels_N, **params["mislabel"]))
    ent = out.pop("entropy_raw")
    with np.errstate(invalid="ignore"):
        out["outlier"] = np.asarray(outlier_flags(ent, out["margin"], n_classes, **params["outlier"])) & ~np.isnan(ent)
    if threshold:
        _threshold_flags(out, threshold, params["aum_threshold"]["percentile"])
    return out


def _threshold_flags(out: dict[str, np.ndarray], threshold: dict, percentile: float) -> None:
    """Pleiss et al.'s rule: a sample whose AUM is at most the ``percentile`` of the threshold
    samples' AUM (they are all mislabelled, into a fake class) is flagged ``aum_mislabel``.

    The threshold samples themselves cannot be judged in this run: no flag is set on them, and
    no flag may suggest the fake class for anyone (no image belongs to it).
    """
    N = len(out["n_observed"])
    fake = int(threshold["class"])
    idx = np.asarray(threshold["indices"], np.int64)
    is_thr = np.zeros(N, bool)
    is_thr[idx] = True
    real = np.full(N, -1, np.int64)
    real[idx] = np.asarray(threshold["labels"], np.int64)
    out["threshold_sample"], out["threshold_label"] = is_thr, real
    out["mislabel"] &= ~is_thr & (out["soft_argmax"] != fake)
    for key in ("confident", "confident_relabel"):
        if key in out:
            out[key] &= ~is_thr
    if "confident_label" in out:
        out["confident_label"][is_thr] = -1
        out["confident_relabel"] &= out["confident_label"] != fake
    if "aum" in out:
        margin = -np.asarray(out["aum"], np.float64)  # AUM itself (the score is its negative)
        ref = margin[is_thr & np.isfinite(margin)]
        alpha = np.percentile(ref, percentile) if len(ref) else np.nan
        valid = (out["n_observed"] > 0) & ~out["nonfinite"]
        with np.errstate(invalid="ignore"):
            out["aum_mislabel"] = valid & ~is_thr & (margin <= alpha)
