"""Every scorer and flag parameter: its type, default and valid range, declared once.

``--param NAME.OPTION=VALUE`` on the command line and ``params={"NAME": {"OPTION": v}}`` in
Python both go through :func:`merge_params`, which refuses unknown names, wrong types and
out-of-range values before any work starts.  ``scores.npz`` records the merged parameters it
was made with; selection reads the flags from it and never recomputes them.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional

from ..options import coerce, parse_value, split_assignment


@dataclass(frozen=True)
class Param:
    type: Any
    default: Any
    valid: Callable[[Any], bool]
    range: str
    help: str


# Flagging rules of the confident-learning detector (:mod:`dprune.scoring.confident`).
CONFIDENT_RULES = ("margin", "noise_rate", "self_confidence")
# What it reads: the soft label softmax(mean_t z_t), or p-bar = mean_t softmax(z_t).
CONFIDENT_PROBS = ("soft_label", "mean_softmax")


def _unit(v) -> bool:
    return 0 <= v <= 1


MAX_EPOCHS = 1_000_000
"""Upper bound of every epoch-counting parameter (windows, epoch indices): far beyond any run,
and small enough for the int64 the kernels take."""

MAX_SEED = 2**63 - 1
"""Upper bound of a seed: numpy's generators take any non-negative integer, the kernels int64."""


def _window(v) -> bool:
    return 2 <= v <= MAX_EPOCHS


_WINDOW_RANGE = f"in [2, {MAX_EPOCHS:,}]"


PARAMS: dict[str, dict[str, Param]] = {
    "el2n": {"epoch": Param(Optional[int], None, lambda v: -MAX_EPOCHS <= v <= MAX_EPOCHS,
                            f"an epoch index in [-{MAX_EPOCHS:,}, {MAX_EPOCHS:,}] (negative counts from the end)",
                            "epoch to read (default: the last)")},
    "tdds": {"window": Param(int, 10, _window, _WINDOW_RANGE, "epochs per window"),
             "decay": Param(float, 0.9, lambda v: 0 < v < 1, "in (0, 1)", "weight decay of older windows")},
    "dyn_unc": {"window": Param(int, 10, _window, _WINDOW_RANGE, "epochs per window")},
    "dual": {"window": Param(int, 10, _window, _WINDOW_RANGE, "epochs per window (J)")},
    "random": {"seed": Param(int, 0, lambda v: 0 <= v <= MAX_SEED, "in [0, 2**63 - 1]", "seed of the random scores")},
    "mislabel": {"min_confidence": Param(float, 0.5, _unit, "in [0, 1]",
                                         "soft-label probability the paper's argmax rule needs to flag")},
    "confident": {"probs": Param(str, "soft_label", lambda v: v in CONFIDENT_PROBS, " or ".join(CONFIDENT_PROBS),
                                 "the probabilities p it reads: soft_label = softmax of the mean logits (the "
                                 "vector the entropy is taken of: one softmax per sample); mean_softmax = the "
                                 "mean of each epoch's softmax (p-bar: one softmax per sample and epoch)"),
                  "agree": Param(float, 0.5, _unit, "in [0, 1]",
                                 "probability p of the suggested class needed to relabel a flagged sample (else "
                                 "it is removed)"),
                  "filter_by": Param(str, "margin", lambda v: v in CONFIDENT_RULES, " or ".join(CONFIDENT_RULES),
                                     "margin: the lowest label margins (p at the label minus the largest other), "
                                     "as many as the confident joint's off-diagonal; noise_rate: per class pair, "
                                     "the largest margins, as many as the calibrated joint says; self_confidence: "
                                     "the lowest p at the label, as many as margin"),
                  "rate": Param(Optional[float], None, _unit, "in [0, 1]",
                                "share of the samples to flag (margin and self_confidence), e.g. the share "
                                "of wrong labels among a random sample checked by hand (`dprune check-labels`); "
                                "default: the confident joint's count")},
    "aum_threshold": {"percentile": Param(float, 99.0, lambda v: 0 <= v <= 100, "in [0, 100]",
                                          "percentile of the threshold samples' AUM below which a sample is flagged")},
    "outlier": {"entropy_threshold": Param(float, 0.9, _unit, "in [0, 1]", "normalised entropy H / log C at or above"),
                "margin_threshold": Param(float, 0.1, _unit, "in [0, 1]", "top-1 minus top-2 probability at or below")},
}


def default_params() -> dict[str, dict]:
    return {name: {k: p.default for k, p in opts.items()} for name, opts in PARAMS.items()}


DEFAULT_PARAMS = default_params()


def merge_params(params: Mapping[str, Mapping] | None) -> dict[str, dict]:
    """The defaults with ``params`` applied, every value checked; a ``ValueError`` names what is wrong."""
    merged = copy.deepcopy(DEFAULT_PARAMS)
    if params is None:
        return merged
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be a mapping {{name: {{option: value}}}}, got {type(params).__name__}")
    for name, opts in params.items():
        if name not in PARAMS:
            raise ValueError(f"no parameters for {name!r}; parametrised: {', '.join(PARAMS)}")
        if not isinstance(opts, Mapping):
            raise ValueError(f"parameters of {name} must be a mapping, got {opts!r}")
        for opt, value in opts.items():
            if opt not in PARAMS[name]:
                raise ValueError(f"unknown parameter {name}.{opt}; valid: "
                                 f"{', '.join(f'{name}.{o}' for o in PARAMS[name])}")
            merged[name][opt] = check_param(name, opt, value)
    check_confident_rule(merged["confident"]["filter_by"], merged["confident"]["rate"])
    return merged


def check_confident_rule(filter_by: str, rate) -> None:
    """A ``confident.rate`` sets the count of the rules that take one count."""
    if rate is not None and filter_by == "noise_rate":
        raise ValueError("confident.rate sets the count of the margin and self_confidence rules; "
                         "noise_rate takes its counts from the calibrated joint")


def check_param(name: str, option: str, value):
    """``value`` of parameter ``name.option``, type- and range-checked (the only range check)."""
    spec = PARAMS[name][option]
    value = coerce(value, spec.type, f"{name}.{option}")
    if value is not None and not spec.valid(value):
        raise ValueError(f"{name}.{option} must be {spec.range}, got {value!r}")
    return value


def parse_params(items: Iterable[str], *, given_only: bool = False) -> dict[str, dict]:
    """``["tdds.window=5", "random.seed=3"]`` -> the merged, validated parameters (with
    ``given_only``: only those given that differ from the defaults, validated and converted,
    for a run to record: restating a default is no change)."""
    out: dict[str, dict] = {}
    for item in items:
        key, value = split_assignment(item, "--param NAME.OPTION=VALUE")
        name, dot, opt = key.partition(".")
        if not dot or not opt or not name:
            raise ValueError(f"--param expects NAME.OPTION=VALUE, got {item!r}")
        out.setdefault(name, {})[opt] = parse_value(value)
    merged = merge_params(out)
    if not given_only:
        return merged
    changed = {n: {o: merged[n][o] for o in opts if merged[n][o] != DEFAULT_PARAMS[n][o]} for n, opts in out.items()}
    return {n: opts for n, opts in changed.items() if opts}


def param_help() -> str:
    """One line per parameter, for ``--help``."""
    return "; ".join(f"{n}.{o}={p.default!r} ({p.range})" for n, opts in PARAMS.items() for o, p in opts.items())

