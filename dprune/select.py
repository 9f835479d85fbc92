"""Selection: scores -> which samples to keep, which to relabel, which to remove; the manifest.

The order of decisions (each documented in the manifest):

1. **Unobserved** samples (no observation in any epoch) are kept and listed: nothing is
   known about them, so they are never pruned.
2. **Outliers** (optional): the flattest soft labels among the observed samples, either the
   ``outlier_fraction`` flattest (normalised entropy descending, then margin ascending) or
   those past a threshold (:func:`~dprune.scoring.outlier_flags`).  Removed, with a reason
   each.  They are removed *in addition to* the pruned samples.
3. **Relabelling** (optional): samples whose soft label confidently disagrees with the given
   label (:func:`~dprune.scoring.mislabel_flags`, ``relabel_min_confidence``) get the soft
   label's argmax as their label and are kept (exempt from pruning), as in the paper.
4. **Pruning**: exactly ``floor(ratio * N_observed + 0.5)`` samples with the lowest scores
   are pruned from the rest.  Samples with non-finite logits go first (they are never
   ranked important); observed samples that the scorer could not score (NaN, e.g. too few
   epochs for a windowed scorer) are kept and listed as ``unscored``.  Ties are broken by a
   seeded random key, not by index.  ``policy="class"`` prunes each class in proportion to
   its observed size (largest remainder rounding, so the total is still exact) and never
   empties a class; ``policy="global"`` ranks all samples together and reports any class it
   empties.
"""
from __future__ import annotations

import hashlib
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .fileio import atomic_savez, atomic_write_json, atomic_write_text, read_json, read_npz
from .scoring import mislabel_flags, outlier_flags

MANIFEST_FORMAT = 1
POLICIES = ("global", "class")


@dataclass
class Selection:
    """The outcome of :func:`select`; index arrays are sorted int64."""

    kept: np.ndarray
    pruned: np.ndarray
    relabel_index: np.ndarray
    relabel_label: np.ndarray
    outlier_index: np.ndarray
    outlier_reason: list[str]
    unobserved: np.ndarray
    unscored: np.ndarray
    nonfinite_pruned: np.ndarray
    labels_final: np.ndarray
    n_observed: int
    emptied_classes: list[int]
    params: dict = field(default_factory=dict)


def n_to_prune(ratio: float, n_observed: int) -> int:
    """``floor(ratio * n_observed + 0.5)``: round half up, the same on every platform."""
    return int(math.floor(ratio * n_observed + 0.5))


def _check_ratio(ratio: float) -> None:
    if not (isinstance(ratio, (int, float)) and 0 <= ratio < 1):
        raise ValueError(f"prune ratio must be in [0, 1), got {ratio}")


def select(
    scores: dict[str, np.ndarray],
    labels_N: np.ndarray,
    n_classes: int,
    *,
    method: str,
    ratio: float,
    policy: str = "global",
    relabel: bool = False,
    relabel_min_confidence: float = 0.5,
    outlier_fraction: float | None = None,
    outlier_entropy_threshold: float | None = None,
    outlier_margin_threshold: float = 0.1,
    seed: int = 0,
) -> Selection:
    """Decide kept / pruned / relabelled / removed samples (see the module docstring).

    Parameters
    ----------
    scores : dict of arrays [N]
        As returned by :func:`dprune.scoring.score_store`; must hold ``method`` and the flags
        (``n_observed``, ``nonfinite``, ``soft_argmax``, ``p_max``, ``margin``) and, for
        outlier removal, ``entropy``.
    labels_N : int array [N]
        The given labels.
    method : str
        Which score ranks the samples (higher = kept first).
    ratio : float in [0, 1)
        Fraction of observed samples to prune by score.
    policy : "global" or "class"
    relabel : bool
        Replace confidently disagreeing labels by the soft label's argmax and keep the sample.
    relabel_min_confidence : float
        Soft-label probability the new class needs for relabelling.
    outlier_fraction : float in [0, 1), optional
        Remove this fraction of observed samples, the flattest soft labels first.
    outlier_entropy_threshold : float in [0, 1], optional
        Remove samples with ``H / log C >=`` this and ``margin <= outlier_margin_threshold``.
    seed : int
        Seed of the tie-breaking key.
    """
    _check_ratio(ratio)
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; valid: {', '.join(POLICIES)}")
    if method not in scores:
        raise ValueError(f"scores hold no {method!r} array; available: {', '.join(sorted(scores))}")
    if outlier_fraction is not None and outlier_entropy_threshold is not None:
        raise ValueError("give either outlier_fraction or outlier_entropy_threshold, not both")
    labels_N = np.asarray(labels_N, dtype=np.int64)
    N = len(labels_N)
    for k, v in scores.items():
        if np.asarray(v).shape != (N,):
            raise ValueError(f"scores[{k!r}] has shape {np.asarray(v).shape}, expected [{N}] (one per sample)")
    score = np.asarray(scores[method], dtype=np.float64)
    observed = np.asarray(scores["n_observed"]) > 0
    nonfinite = np.asarray(scores["nonfinite"], dtype=bool) & observed
    n_observed = int(observed.sum())

    # 2. outliers
    outlier = np.zeros(N, bool)
    reasons: dict[int, str] = {}
    if outlier_fraction is not None or outlier_entropy_threshold is not None:
        if "entropy" not in scores:
            raise ValueError("outlier removal needs the 'entropy' score in the scores")
        ent = np.asarray(scores["entropy"], dtype=np.float64)
        margin = np.asarray(scores["margin"], dtype=np.float64)
        h_norm = ent / math.log(n_classes) if n_classes > 1 else np.zeros(N)
        candidate = observed & ~nonfinite & np.isfinite(ent)
        if outlier_fraction is not None:
            if not 0 <= outlier_fraction < 1:
                raise ValueError(f"outlier fraction must be in [0, 1), got {outlier_fraction}")
            k = n_to_prune(outlier_fraction, n_observed)
            idx = np.flatnonzero(candidate)
            order = np.lexsort((margin[idx], -h_norm[idx]))[:k]
            outlier[idx[order]] = True
            rule = f"among the {outlier_fraction:g} flattest soft labels"
        else:
            flags = outlier_flags(ent, margin, n_classes, entropy_threshold=outlier_entropy_threshold,
                                  margin_threshold=outlier_margin_threshold)
            outlier = np.asarray(flags, bool) & candidate
            rule = f"H/logC >= {outlier_entropy_threshold:g} and margin <= {outlier_margin_threshold:g}"
        for i in np.flatnonzero(outlier):
            reasons[int(i)] = f"flat soft label ({rule}): H/logC = {h_norm[i]:.3f}, margin = {margin[i]:.3f}"

    # 3. relabelling
    labels_final = labels_N.copy()
    relabelled = np.zeros(N, bool)
    if relabel:
        flags = mislabel_flags(np.asarray(scores["soft_argmax"]), np.asarray(scores["p_max"]), labels_N,
                               min_confidence=relabel_min_confidence)
        relabelled = np.asarray(flags, bool) & observed & ~nonfinite & ~outlier
        labels_final[relabelled] = np.asarray(scores["soft_argmax"])[relabelled]

    # 4. pruning
    pool = observed & ~outlier & ~relabelled
    unscored = pool & ~nonfinite & np.isnan(score)
    pool &= ~unscored
    key = np.where(nonfinite, -np.inf, score)
    tiebreak = np.random.default_rng(seed).random(N)
    n_prune = n_to_prune(ratio, n_observed)
    if policy == "global":
        idx = np.flatnonzero(pool)
        if n_prune > len(idx):
            raise ValueError(f"cannot prune {n_prune} samples: only {len(idx)} are prunable "
                             f"({n_observed} observed, {int(outlier.sum())} outliers, {int(relabelled.sum())} relabelled, "
                             f"{int(unscored.sum())} unscored)")
        pruned_idx = idx[np.lexsort((tiebreak[idx], key[idx]))[:n_prune]]
    else:
        pruned_idx = _class_balanced(pool, observed & ~outlier, key, tiebreak, labels_final, n_classes, ratio, n_prune)
    pruned = np.zeros(N, bool)
    pruned[pruned_idx] = True
    kept = ~pruned & ~outlier
    emptied = sorted(set(np.unique(labels_final[observed]).tolist()) - set(np.unique(labels_final[kept]).tolist()))

    return Selection(
        kept=np.flatnonzero(kept),
        pruned=np.flatnonzero(pruned),
        relabel_index=np.flatnonzero(relabelled),
        relabel_label=labels_final[relabelled],
        outlier_index=np.flatnonzero(outlier),
        outlier_reason=[reasons[int(i)] for i in np.flatnonzero(outlier)],
        unobserved=np.flatnonzero(~observed),
        unscored=np.flatnonzero(unscored),
        nonfinite_pruned=np.flatnonzero(pruned & nonfinite),
        labels_final=labels_final,
        n_observed=n_observed,
        emptied_classes=[int(c) for c in emptied],
        params={
            "method": method, "ratio": ratio, "policy": policy, "relabel": relabel,
            "relabel_min_confidence": relabel_min_confidence, "outlier_fraction": outlier_fraction,
            "outlier_entropy_threshold": outlier_entropy_threshold,
            "outlier_margin_threshold": outlier_margin_threshold, "seed": seed,
        },
    )


def _class_balanced(pool, observed, key, tiebreak, labels, n_classes, ratio, n_prune) -> np.ndarray:
    """Per-class quotas proportional to observed class sizes, summing to ``n_prune``.

    Largest-remainder rounding; a class keeps at least one sample; quotas a class cannot
    meet move to the classes with the largest unmet share.
    """
    n_c = np.bincount(labels[observed], minlength=n_classes).astype(np.int64)
    pool_c = np.bincount(labels[pool], minlength=n_classes)
    kept_anyway_c = n_c - pool_c  # observed, not prunable (relabelled, unscored): always kept
    cap = np.maximum(pool_c - (kept_anyway_c == 0), 0)
    if cap.sum() < n_prune:
        raise ValueError(f"cannot prune {n_prune} samples class-balanced without emptying a class "
                         f"(at most {int(cap.sum())} can go)")
    target = ratio * n_c
    quota = np.minimum(np.floor(target).astype(np.int64), cap)
    while quota.sum() < n_prune:
        room = cap > quota
        unmet = np.where(room, target - quota, -np.inf)
        quota[int(np.argmax(unmet))] += 1
    out = []
    for c in np.flatnonzero(quota):
        idx = np.flatnonzero(pool & (labels == c))
        out.append(idx[np.lexsort((tiebreak[idx], key[idx]))[: quota[c]]])
    return np.concatenate(out) if out else np.zeros(0, np.int64)


# -------------------------------------------------------------------------------- manifest
def manifest_dict(sel: Selection, *, source_run: str, fingerprint: dict, n_classes: int, scorer_params: dict) -> dict:
    N = len(sel.labels_final)
    n_pruned = len(sel.pruned)
    return {
        "format_version": MANIFEST_FORMAT,
        "kind": "dprune-manifest",
        "source_run": source_run,
        "fingerprint": fingerprint,
        "n_samples": N,
        "n_classes": int(n_classes),
        "scorer": sel.params["method"],
        "scorer_params": scorer_params,
        "policy": sel.params["policy"],
        "selection_params": sel.params,
        "ratio_requested": sel.params["ratio"],
        "n_observed": sel.n_observed,
        "n_pruned": n_pruned,
        "ratio_achieved": n_pruned / sel.n_observed if sel.n_observed else 0.0,
        "n_outliers": len(sel.outlier_index),
        "n_kept": len(sel.kept),
        "n_removed_total": n_pruned + len(sel.outlier_index),
        "kept": sel.kept.tolist(),
        "pruned": sel.pruned.tolist(),
        "relabelled": {str(int(i)): int(c) for i, c in zip(sel.relabel_index, sel.relabel_label)},
        "removed_outliers": [{"index": int(i), "reason": r} for i, r in zip(sel.outlier_index, sel.outlier_reason)],
        "unobserved": sel.unobserved.tolist(),
        "unscored": sel.unscored.tolist(),
        "nonfinite_pruned": sel.nonfinite_pruned.tolist(),
        "emptied_classes": sel.emptied_classes,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": shlex.join(sys.argv),
    }


def write_manifest(path, sel: Selection, *, source_run: str, fingerprint: dict, n_classes: int, scorer_params: dict) -> dict:
    """Write ``manifest.json`` and the same as arrays in ``manifest.npz`` beside it, atomically.

    The npz is written first; the JSON, written last, records the npz's SHA-256, so a reader
    can tell a stale or torn npz from the one that belongs to the JSON.
    """
    path = Path(path)
    npz_path = path.with_suffix(".npz")
    m = manifest_dict(sel, source_run=source_run, fingerprint=fingerprint, n_classes=n_classes, scorer_params=scorer_params)
    atomic_savez(npz_path, {
        "kept": sel.kept, "pruned": sel.pruned, "relabel_index": sel.relabel_index, "relabel_label": sel.relabel_label,
        "outlier_index": sel.outlier_index, "unobserved": sel.unobserved, "unscored": sel.unscored,
        "labels": sel.labels_final,
    })
    m["npz"] = npz_path.name
    m["npz_sha256"] = hashlib.sha256(npz_path.read_bytes()).hexdigest()
    atomic_write_json(path, m)
    return m


@dataclass
class Manifest:
    """A loaded, validated manifest: what to train on and with which labels."""

    data: dict
    kept: np.ndarray
    labels: np.ndarray  # [N] final labels (given labels with relabellings applied)

    @property
    def fingerprint(self) -> dict:
        return self.data["fingerprint"]


def load_manifest(path, *, fingerprint: dict | None = None, labels_N: np.ndarray | None = None) -> Manifest:
    """Read and check a manifest; refuse one made for another dataset.

    With ``fingerprint``, a mismatch raises ``ValueError``.  ``labels_N`` (the dataset's given
    labels) lets the final labels be rebuilt from ``relabelled`` without the npz.
    """
    path = Path(path)
    m = read_json(path, "manifest")
    if not isinstance(m, dict) or m.get("kind") != "dprune-manifest":
        raise ValueError(f"{path} is not a dprune manifest")
    if m.get("format_version") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: manifest format {m.get('format_version')} is not supported")
    for k in ("fingerprint", "n_samples", "kept", "pruned", "relabelled", "removed_outliers", "n_classes"):
        if k not in m:
            raise ValueError(f"{path} is incomplete: missing {k!r}")
    if fingerprint is not None and m["fingerprint"] != fingerprint:
        raise ValueError(
            f"{path} was made for a different dataset (fingerprint {m['fingerprint'].get('sha256', '?')[:12]}, "
            f"N={m['fingerprint'].get('n_samples')}; this dataset: {fingerprint['sha256'][:12]}, N={fingerprint['n_samples']})"
        )
    N, C = int(m["n_samples"]), int(m["n_classes"])
    kept = np.asarray(m["kept"], dtype=np.int64)
    removed = np.r_[np.asarray(m["pruned"], np.int64), np.asarray([o["index"] for o in m["removed_outliers"]], np.int64)]
    if kept.size and (kept.min() < 0 or kept.max() >= N):
        raise ValueError(f"{path}: kept indices outside [0, {N})")
    if np.intersect1d(kept, removed).size:
        raise ValueError(f"{path}: some samples are both kept and removed")
    if labels_N is not None:
        labels = np.asarray(labels_N, np.int64).copy()
        if labels.shape != (N,):
            raise ValueError(f"labels have shape {labels.shape}, manifest has N = {N}")
    else:
        npz = read_npz(path.with_name(m.get("npz", path.with_suffix(".npz").name)), "manifest arrays")
        digest = hashlib.sha256(path.with_name(m["npz"]).read_bytes()).hexdigest()
        if digest != m.get("npz_sha256"):
            raise ValueError(f"{path}: {m['npz']} does not belong to this manifest (checksum mismatch)")
        labels = npz["labels"].astype(np.int64)
    for i, c in m["relabelled"].items():
        if not 0 <= int(c) < C:
            raise ValueError(f"{path}: relabelled sample {i} has label {c} outside [0, {C})")
        labels[int(i)] = int(c)
    return Manifest(data=m, kept=kept, labels=labels)


def export_list(manifest: Manifest, sample_ids: list[str], path) -> int:
    """Write the kept samples as ``index<TAB>sample_id<TAB>label`` lines; return the count."""
    if len(sample_ids) != manifest.data["n_samples"]:
        raise ValueError(f"{len(sample_ids)} sample ids for a manifest of N = {manifest.data['n_samples']}")
    lines = [f"{i}\t{sample_ids[i]}\t{manifest.labels[i]}\n" for i in manifest.kept.tolist()]
    atomic_write_text(Path(path), "".join(lines))
    return len(lines)
