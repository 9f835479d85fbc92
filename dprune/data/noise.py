"""Synthetic label noise with a record of which labels were flipped.

Experiments inject noise, score the trajectory and check how many of the flipped samples
the mislabel flags find, so both functions return the mask of flipped samples beside the
noisy labels.  The flip count is exact (not a Bernoulli draw per sample), so a rate of 0.2
on 1,000 samples always flips 200, which keeps small experiments comparable across seeds.

Legend: N samples, K classes.
"""
from __future__ import annotations

import math

import numpy as np

from ..labels import validate_labels


def symmetric_noise(
    labels: np.ndarray, num_classes: int, rate: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly ``round(rate * N)`` labels, each to a different class drawn uniformly.

    Parameters
    ----------
    labels : array-like of int, shape [N]
        Clean labels in ``[0, num_classes)``.
    num_classes : int
        Number of classes K, at least 2.
    rate : float
        Fraction of samples to flip, in [0, 1]; the count is rounded half up.
    seed : int
        Seed of the generator; the same inputs and seed give the same result.

    Returns
    -------
    noisy_labels : np.ndarray, int64 [N]
        A copy of ``labels`` with the chosen samples flipped.
    flipped : np.ndarray, bool [N]
        True where the label was changed (``noisy_labels != labels`` exactly there).
    """
    labels_N = _check(labels, num_classes, rate)
    rng = np.random.default_rng(seed)
    n_flip = _round_half_up(rate * len(labels_N))
    chosen = rng.choice(len(labels_N), size=n_flip, replace=False)
    # An offset in [1, K) added mod K gives each of the other K-1 classes with equal
    # probability and can never give back the original class.
    offsets = rng.integers(1, num_classes, size=n_flip)
    noisy_N = labels_N.copy()
    noisy_N[chosen] = (labels_N[chosen] + offsets) % num_classes
    flipped_N = np.zeros(len(labels_N), dtype=bool)
    flipped_N[chosen] = True
    return noisy_N, flipped_N


def class_dependent_noise(
    labels: np.ndarray,
    num_classes: int,
    rate: float,
    seed: int,
    transition: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Flip ``round(rate * n_c)`` samples of every class ``c`` to the class ``transition[c]``.

    This is the "asymmetric" noise of the noisy-label literature: each class is confused
    with one fixed other class (e.g. truck -> automobile), which is harder to detect than
    symmetric noise because the wrong labels are consistent.

    Parameters
    ----------
    labels : array-like of int, shape [N]
        Clean labels in ``[0, num_classes)``.
    num_classes : int
        Number of classes K, at least 2.
    rate : float
        Fraction of each class to flip, in [0, 1]; each count is rounded half up.
    seed : int
        Seed of the generator; the same inputs and seed give the same result.
    transition : array-like of int, shape [K], optional
        ``transition[c]`` is the class that class ``c`` flips to; it must differ from
        ``c``.  Default ``(c + 1) % K``.

    Returns
    -------
    noisy_labels : np.ndarray, int64 [N]
    flipped : np.ndarray, bool [N]
        True where the label was changed.
    """
    labels_N = _check(labels, num_classes, rate)
    if transition is None:
        target_K = (np.arange(num_classes) + 1) % num_classes
    else:
        target_K = np.asarray(transition)
        if target_K.shape != (num_classes,) or not np.issubdtype(target_K.dtype, np.integer):
            raise ValueError(
                f"transition must be an int array of shape ({num_classes},), got "
                f"{target_K.dtype} {target_K.shape}")
        if target_K.min() < 0 or target_K.max() >= num_classes:
            raise ValueError(
                f"transition targets must lie in [0, {num_classes}), got range "
                f"[{target_K.min()}, {target_K.max()}]")
        fixed = np.flatnonzero(target_K == np.arange(num_classes))
        if fixed.size:
            raise ValueError(
                f"transition must send every class to a different class; class "
                f"{int(fixed[0])} maps to itself")
    rng = np.random.default_rng(seed)
    noisy_N = labels_N.copy()
    flipped_N = np.zeros(len(labels_N), dtype=bool)
    for c in range(num_classes):
        members = np.flatnonzero(labels_N == c)
        chosen = rng.choice(members, size=_round_half_up(rate * len(members)), replace=False)
        noisy_N[chosen] = target_K[c]
        flipped_N[chosen] = True
    return noisy_N, flipped_N


def instance_dependent_noise(
    labels: np.ndarray, probs_NK: np.ndarray, rate: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flip ``round(rate * N)`` labels, each to the class a separate model confuses it with most.

    A stand-in for annotation noise: an annotator errs more on the images a model finds
    ambiguous, and towards the class they look like.  Samples are drawn without replacement
    with probability proportional to the model's probability mass outside their label
    (``1 - probs[i, y_i]``), and each is flipped to its most probable other class.

    Parameters
    ----------
    labels : array-like of int, shape [N]
        Clean labels in ``[0, K)``.
    probs_NK : float array [N, K]
        Class probabilities of each sample from a model that did not train on it (e.g.
        cross-fitted halves); finite and non-negative.
    rate : float
        Fraction of samples to flip, in [0, 1].
    seed : int

    Returns
    -------
    noisy_labels : np.ndarray, int64 [N]
    flipped : np.ndarray, bool [N]
    """
    probs = np.asarray(probs_NK, np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, K], got shape {probs.shape}")
    labels_N = _check(labels, probs.shape[1], rate)
    if probs.shape[0] != len(labels_N):
        raise ValueError(f"probs have {probs.shape[0]} rows for {len(labels_N)} labels")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError("probs must be finite and non-negative")
    n_flip = _round_half_up(rate * len(labels_N))
    other = probs.copy()
    other[np.arange(len(labels_N)), labels_N] = -1.0
    target_N = other.argmax(1)
    weight = np.clip(1.0 - probs[np.arange(len(labels_N)), labels_N] / np.maximum(probs.sum(1), 1e-12), 1e-12, None)
    chosen = np.random.default_rng(seed).choice(len(labels_N), size=n_flip, replace=False, p=weight / weight.sum())
    noisy_N = labels_N.copy()
    noisy_N[chosen] = target_N[chosen]
    flipped_N = np.zeros(len(labels_N), dtype=bool)
    flipped_N[chosen] = True
    return noisy_N, flipped_N


def _round_half_up(x: float) -> int:
    # Python's round() rounds halves to even (round(2.5) == 2); half up is what a
    # reader of "flip 25% of 10 samples" expects.
    return int(math.floor(x + 0.5))


def _check(labels: np.ndarray, num_classes: int, rate: float) -> np.ndarray:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2 to flip labels, got {num_classes!r}")
    labels_N = validate_labels(labels, num_classes)
    if not isinstance(rate, (int, float, np.floating, np.integer)) or isinstance(rate, bool) \
            or not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be a number in [0, 1], got {rate!r}")
    return labels_N
