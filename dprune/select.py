"""Selection: scores -> which samples to keep, which to relabel, which to remove.

The order of decisions (each documented in the manifest):

1. **Unobserved** samples (no observation in any epoch) are kept and listed: nothing is
   known about them, so they are never pruned.
2. **Outliers** (optional): the flattest soft labels among the observed samples, either the
   ``outliers`` fraction flattest (normalised entropy descending, then margin ascending) or,
   with ``outliers="flagged"``, those the ``outlier`` flag of the scores marks.  Removed,
   with a reason each, *in addition to* the pruned samples.
3. **Mislabels** (optional, ``relabel=True``): the samples a detector flags.  ``detector=
   "argmax"`` is the paper's rule (the ``mislabel`` flag: soft-label argmax differs from the
   label, with the confidence of ``mislabel.min_confidence``): they get the soft label's
   argmax and are kept, exempt from pruning.  ``detector="confident"`` is confident learning
   over the trajectory (the ``confident`` flag): a flagged sample gets the suggested class
   when the trajectory agrees with it (``confident_relabel``) and is removed otherwise.
   With ``mislabelled="remove"`` every flagged sample is removed instead (no label is
   changed: a wrong relabelling makes a clean sample noisy, a removal only loses it).
4. **Pruning**: exactly ``floor(ratio * N_observed + 0.5)`` samples with the lowest scores
   are pruned from the rest (``budget="score"``), or that many less the removals of steps 2
   and 3, none once those reach it (``budget="total"``: ``ratio`` is then the fraction
   removed in all, unless the removals alone exceed it).  Samples with non-finite logits go
   first, under either budget (they are never ranked important); observed samples that the
   scorer could not score (NaN, e.g. too few epochs for a windowed scorer) are kept and listed
   as ``unscored``.  Ties are broken by a
   seeded random key drawn from a stream of its own for each scorer, never the ``random``
   scorer's.  ``policy="class"`` prunes each class in proportion to the observed samples the
   removals leave it (largest remainder rounding, so the total is still exact) and never
   empties a class;
   ``policy="global"`` ranks all samples together and reports any class it empties.

Flags are never recomputed here: they come from ``scores.npz`` (:mod:`dprune.scoring`), made
with the parameters recorded there.  A selection that would keep nothing is refused.
"""
from __future__ import annotations

import math
import typing
import zlib
from dataclasses import asdict, dataclass, field, fields
from typing import Optional, Union

import numpy as np

from .options import coerce

POLICIES = ("global", "class")
MISLABEL_DETECTORS = ("argmax", "confident", "aum")
MISLABELLED_ACTIONS = ("relabel", "remove")
BUDGETS = ("score", "total")
# Tie-break streams: numpy SeedSequence entropy [seed, _TIEBREAK, crc32(scorer)] gives every
# scorer its own stream, independent of the random scorer's default_rng(seed).
_TIEBREAK = 0x7E1B


def _option(default, help: str, *, what: str | None = None, choices: tuple = (), unit: bool = False,
            flag: str | None = None, short: str | None = None, metavar: str | None = None):
    """A :class:`PruneSpec` field and everything the command line says and checks about it.

    ``what`` names the field in errors; ``choices`` are its valid strings; ``unit``: a number
    must be in [0, 1); ``flag`` / ``short`` / ``metavar`` shape its option (default
    ``--field-name``).  :meth:`PruneSpec.__post_init__` checks these and nothing else.
    """
    return field(default=default, metadata={"help": help, "what": what, "choices": choices, "unit": unit,
                                            "flag": flag, "short": short, "metavar": metavar})


@dataclass(frozen=True)
class PruneSpec:
    """How to select: the one definition of the selection options.

    ``dprune prune``, ``dprune run`` and ``train --prune-at`` generate their options from these
    fields (help, choices and checks in each field's metadata, see :func:`_option`); adding a
    field here adds the option everywhere.  Defaults: ``dprune prune`` uses the ones below,
    ``dprune run`` and ``train --prune-at`` those of :data:`RUN_DEFAULTS`.
    """

    method: str = _option("entropy", "Scorer that ranks the samples (lowest scores are pruned).", short="-m")
    ratio: float = _option(0.3, "Fraction of observed samples to prune, in [0, 1): exactly round(ratio * "
                                "N_observed) by score (--budget score), or that many in all (--budget total).",
                           what="prune ratio", unit=True, short="-r")
    budget: str = _option("score", "What --ratio counts: 'score': the samples the score prunes, on top of the "
                                   "mislabelled and outlier removals (the paper); 'total': every removal, so the "
                                   "score prunes only what the removals leave of it (nothing once they exceed it).",
                          choices=BUDGETS)
    policy: str = _option("global", "'global' ranks all samples together; 'class' prunes each class in proportion "
                                    "and never empties one.", choices=POLICIES)
    relabel: bool = _option(False, "Act on the mislabel detector: relabel the flagged samples (and keep them), or "
                                   "remove them when the detector has no agreed label.")
    detector: str = _option("argmax", "'argmax': the paper's rule (soft-label argmax differs from the label, p_max >= "
                                      "mislabel.min_confidence); 'confident': confident learning over the trajectory; "
                                      "'aum': remove samples whose AUM is below the threshold samples' (recorded with "
                                      "dprune train --threshold-samples; dprune run records them itself).",
                            what="mislabel detector", choices=MISLABEL_DETECTORS)
    mislabelled: str = _option("relabel", "With --relabel, what a flagged sample gets: 'relabel' (the detector's "
                                          "agreed label; removed when none is agreed) or 'remove' (every flagged "
                                          "sample removed, no label changed).",
                               what="mislabelled action", choices=MISLABELLED_ACTIONS)
    outliers: Optional[Union[float, str]] = _option(
        None, "Also remove this fraction of observed samples with the flattest soft labels, or 'flagged': those the "
              "outlier flag marks (thresholds: --param outlier.*).",
        choices=("flagged",), unit=True, flag="--remove-outliers", metavar="FRACTION|flagged")
    seed: int = _option(0, "Seed for breaking score ties.")

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            meta = f.metadata
            what = meta.get("what") or f.name
            value = coerce(getattr(self, f.name), hints[f.name], what)
            object.__setattr__(self, f.name, value)
            choices, unit = meta.get("choices", ()), meta.get("unit", False)
            if unit and not isinstance(value, (str, type(None))) and not 0 <= value < 1:
                alternatives = "".join(f" or {c!r}" for c in choices)
                raise ValueError(f"{what} must be in [0, 1){alternatives}, got {value!r}")
            if choices and isinstance(value, str) and value not in choices:
                raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(choices)}"
                                 + (" or a number in [0, 1)" if unit else ""))

    def methods_needed(self) -> list[str]:
        """Scorers the scores must hold for this selection."""
        extra = (["entropy"] if isinstance(self.outliers, float) else []) + \
            ({"confident": ["confident"], "aum": ["aum"]}.get(self.detector, []) if self.relabel else [])
        return list(dict.fromkeys([self.method] + extra))

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """The ratio as the run reports it: 'entropy 30%', or '30% in all, entropy for the rest'."""
        if self.budget == "total":
            return f"{self.ratio:.0%} in all, {self.method} for the rest"
        return f"{self.method} {self.ratio:.0%}"


# The selection ``dprune run`` and ``dprune train --prune-at`` make unless told otherwise: one
# default, declared with its test in benchmarks/RESULTS.md ("The second default"; the confident
# detector's input, the soft label, is its ``probs`` parameter's default in scoring/params.py).
RUN_DEFAULTS = PruneSpec(method="entropy", ratio=0.3, budget="total", policy="class", relabel=True,
                         detector="confident", mislabelled="remove", outliers=None)


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
    threshold_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """Threshold samples (kept, their real labels given back): not judged in the run that scored."""


def n_to_prune(ratio: float, n_observed: int) -> int:
    """``floor(ratio * n_observed + 0.5)``: round half up, the same on every platform."""
    return int(math.floor(ratio * n_observed + 0.5))


def tiebreak_key(seed: int, method: str, n: int) -> np.ndarray:
    """Uniform [0, 1) keys that order ties of ``method``'s scores (a stream of its own)."""
    ss = np.random.SeedSequence([seed & 0xFFFFFFFF, _TIEBREAK, zlib.crc32(method.encode())])
    return np.random.default_rng(ss).random(n)


def select(scores: dict[str, np.ndarray], labels_N: np.ndarray, n_classes: int, spec: PruneSpec | None = None,
           **options) -> Selection:
    """Decide kept / pruned / relabelled / removed samples (see the module docstring).

    Parameters
    ----------
    scores : dict of arrays [N]
        As returned by :func:`dprune.scoring.score_store`: ``spec.method``, the flags
        (``n_observed``, ``nonfinite``, ``soft_argmax``, ``margin``, ``mislabel``,
        ``outlier``) and, for the ``confident`` detector, its flags; for outlier removal by
        fraction, ``entropy``.
    labels_N : int array [N]
        The given labels.
    spec : PruneSpec, or its fields as keyword options.
    """
    if spec is None:
        spec = PruneSpec(**options)
    elif options:
        spec = PruneSpec(**{**spec.to_dict(), **options})
    method = spec.method
    labels_N = np.asarray(labels_N, dtype=np.int64)
    N = len(labels_N)
    _check_scores(scores, method, N)
    score = np.asarray(scores[method], dtype=np.float64)
    observed = np.asarray(scores["n_observed"]) > 0
    nonfinite = np.asarray(scores["nonfinite"], dtype=bool) & observed
    n_observed = int(observed.sum())
    # Threshold samples trained in a fake class: kept with their real labels, never judged.
    thr = np.asarray(scores.get("threshold_sample", np.zeros(N, bool)), bool)

    # 2. outliers
    outlier, reasons = _outliers(spec, scores, observed & ~nonfinite & ~thr, n_classes, n_observed)

    # 3. mislabels
    labels_final = labels_N.copy()
    relabelled = np.zeros(N, bool)
    if spec.relabel:
        flagged, suggestion, agreed, why = _detector(spec, scores, labels_N)
        flagged = flagged & observed & ~nonfinite & ~outlier & ~thr
        if spec.mislabelled == "relabel":
            relabelled = flagged & agreed
            labels_final[relabelled] = suggestion[relabelled]
        removed = flagged & ~relabelled
        for i in np.flatnonzero(removed):
            reasons[int(i)] = why(i)
        outlier |= removed

    if thr.any():  # their dataset labels, which a manifest refers to (not a relabelling)
        labels_final[thr] = np.asarray(scores["threshold_label"])[thr]

    # 4. pruning
    pool = observed & ~outlier & ~relabelled & ~thr
    unscored = pool & ~nonfinite & np.isnan(score)
    # Why samples cannot be pruned, for the refusals.
    held = (f"{n_observed} observed, {int(outlier.sum())} removed, {int(relabelled.sum())} relabelled, "
            f"{int(unscored.sum())} unscored by {method}, {int(thr.sum())} threshold samples")
    n_prune = n_to_prune(spec.ratio, n_observed)
    if spec.budget == "total":  # the removals (mislabelled, outliers) count inside the ratio
        n_prune = max(0, n_prune - int((outlier & observed & ~thr).sum()))
    # Samples with non-finite logits go whatever the budget leaves (they are never ranked important).
    n_prune = max(n_prune, int((nonfinite & pool).sum()))
    pruned_idx = _pruned(spec, np.where(nonfinite, -np.inf, score), pool & ~unscored, observed & ~outlier,
                         labels_final, n_classes, n_prune, held)
    pruned = np.zeros(N, bool)
    pruned[pruned_idx] = True
    kept = ~pruned & ~outlier
    if not kept.any():
        raise ValueError(f"this selection keeps no sample ({int(pruned.sum())} pruned, {int(outlier.sum())} removed "
                         f"of {N}); lower the ratio or the outlier fraction")
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
        params=spec.to_dict(),
        threshold_index=np.flatnonzero(thr),
    )


def _check_scores(scores: dict, method: str, N: int) -> None:
    if method not in scores:
        raise ValueError(f"scores hold no {method!r} array; available: {', '.join(sorted(scores))}")
    for k, v in scores.items():
        if np.asarray(v).shape != (N,):
            raise ValueError(f"scores[{k!r}] has shape {np.asarray(v).shape}, expected [{N}] (one per sample)")


def _outliers(spec: PruneSpec, scores: dict, candidate_N: np.ndarray, n_classes: int, n_observed: int
              ) -> tuple[np.ndarray, dict[int, str]]:
    """Step 2: the outliers among ``candidate_N`` (bool [N]) and a reason each (sample index -> text)."""
    N = len(candidate_N)
    outlier = np.zeros(N, bool)
    if spec.outliers is None:
        return outlier, {}
    margin = np.asarray(scores["margin"], dtype=np.float64)
    if spec.outliers == "flagged":
        outlier = np.asarray(scores["outlier"], bool) & candidate_N
        rule = "outlier flag of the scores"
        h_norm = None
    else:
        if "entropy" not in scores:
            raise ValueError("outlier removal by fraction needs the 'entropy' score in the scores")
        ent = np.asarray(scores["entropy"], dtype=np.float64)
        from .scoring.flags import normalised_entropy  # here, so that importing select stays light

        h_norm = normalised_entropy(ent, n_classes)
        idx = np.flatnonzero(candidate_N & np.isfinite(ent))
        order = np.lexsort((margin[idx], -h_norm[idx]))[:n_to_prune(spec.outliers, n_observed)]
        outlier[idx[order]] = True
        rule = f"among the {spec.outliers:g} flattest soft labels"
    reasons = {}
    for i in np.flatnonzero(outlier):
        h = f"H/logC = {h_norm[i]:.3f}, " if h_norm is not None else ""
        reasons[int(i)] = f"flat soft label ({rule}): {h}margin = {margin[i]:.3f}"
    return outlier, reasons


def _detector(spec: PruneSpec, scores: dict, labels_N: np.ndarray):
    """Step 3's detector: its flags [N], its suggested labels [N], where it agrees to relabel [N],
    and a removed sample's reason (sample index -> text)."""
    if spec.detector == "argmax":
        flagged, suggestion = np.asarray(scores["mislabel"], bool), np.asarray(scores["soft_argmax"])
        return flagged, suggestion, flagged, \
            lambda i: f"mislabelled (soft-label argmax): given {labels_N[i]}, argmax {int(suggestion[i])}"
    if spec.detector == "aum":
        if "aum_mislabel" not in scores:
            raise ValueError("the aum detector needs threshold samples (dprune train --threshold-samples) "
                             "and the aum score")
        flagged = np.asarray(scores["aum_mislabel"], bool)
        return flagged, labels_N, np.zeros_like(flagged), \
            lambda i: "mislabelled: AUM below the threshold samples' (Pleiss et al.)"  # no label: always removed
    for key in ("confident", "confident_label", "confident_relabel"):
        if key not in scores:
            raise ValueError(f"the confident detector needs {key!r} in the scores (score with "
                             f"every method, or the 'confident' flags)")
    suggestion = np.asarray(scores["confident_label"])
    state = "with no agreed label" if spec.mislabelled == "relabel" else "removed"
    return np.asarray(scores["confident"], bool), suggestion, np.asarray(scores["confident_relabel"], bool), \
        lambda i: f"mislabelled (confident learning) {state}: given {labels_N[i]}, suggested {int(suggestion[i])}"


def _pruned(spec: PruneSpec, key_N: np.ndarray, pool_N: np.ndarray, observed_N: np.ndarray, labels_N: np.ndarray,
            n_classes: int, n_prune: int, held: str) -> np.ndarray:
    """Step 4: the ``n_prune`` samples of ``pool_N`` with the lowest ``key_N`` (ties by the seeded
    key), over all samples or class-balanced; ``held`` says why the others cannot go."""
    tiebreak = tiebreak_key(spec.seed, spec.method, len(key_N))
    if spec.policy == "class":
        return _class_balanced(pool_N, observed_N, key_N, tiebreak, labels_N, n_classes, n_prune, held)
    idx = np.flatnonzero(pool_N)
    if n_prune > len(idx):
        raise ValueError(f"cannot prune {n_prune} samples: only {len(idx)} are prunable ({held})")
    return idx[np.lexsort((tiebreak[idx], key_N[idx]))[:n_prune]]


def _class_balanced(pool, observed, key, tiebreak, labels, n_classes, n_prune, held: str) -> np.ndarray:
    """Per-class quotas proportional to the classes' sizes in ``observed`` (what the removals
    leave), summing to ``n_prune``.

    Largest-remainder rounding; a class keeps at least one sample; quotas a class cannot
    meet move to the classes with the largest unmet share.
    """
    n_c = np.bincount(labels[observed], minlength=n_classes).astype(np.int64)
    pool_c = np.bincount(labels[pool], minlength=n_classes)
    kept_anyway_c = n_c - pool_c  # observed, not prunable (relabelled, unscored): always kept
    cap = np.maximum(pool_c - (kept_anyway_c == 0), 0)
    if cap.sum() < n_prune:
        raise ValueError(f"cannot prune {n_prune} samples class-balanced without emptying a class "
                         f"(at most {int(cap.sum())} can go; {held})")
    target = n_prune / max(1, int(n_c.sum())) * n_c
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
