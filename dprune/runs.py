"""A training run as the stages see it: the trainer's configuration and, for prune-in-run, the selection.

:class:`TrainRun` nests the :class:`~dprune.train.config.TrainConfig` (which carries no
selection) and ``prune``, a :class:`~dprune.select.PruneSpec` made after epoch ``prune_at``;
it builds the :class:`~dprune.train.loop.Trainer` with its injected parts: the end-of-epoch
hook (:class:`dprune.pruning.PruneInRun`) and the summary store's fold
(:class:`dprune.scoring.online.SummaryFold`).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from .pruning import PruneInRun
from .select import PruneSpec
from .train.config import TrainConfig
from .train.loop import Trainer

# The option names (``dprune train``, ``--set``, a ``--config`` file) of the selection's PruneSpec
# fields, from their flags (``--remove-outliers`` -> ``remove_outliers``: ``outliers``); its seed is
# the training seed.
SELECTION_OPTIONS = {(f.metadata["flag"] or f"--{f.name}")[2:].replace("-", "_"): f.name
                     for f in dataclasses.fields(PruneSpec) if f.name != "seed"}


def selection(options: dict, seed: int) -> PruneSpec:
    """The PruneSpec of the selection options given in ``options`` (``RUN_DEFAULTS`` for the others);
    a value of a field that is not a plain type (``outliers``: a fraction or 'flagged') may come
    as command-line text."""
    from .options import parse_value
    from .select import RUN_DEFAULTS

    hints = typing.get_type_hints(PruneSpec)
    given = {SELECTION_OPTIONS[k]: v for k, v in options.items() if k in SELECTION_OPTIONS and v is not None}
    given = {k: parse_value(v) if isinstance(v, str) and hints[k] not in (bool, int, float, str) else v
             for k, v in given.items()}
    return dataclasses.replace(RUN_DEFAULTS, seed=seed, **given)


@dataclass(frozen=True)
class TrainRun:
    """One training run as the stages see it: the trainer's configuration and, for prune-in-run,
    the selection ``prune`` made after epoch ``prune_at`` (both or neither), with the scoring
    parameters ``params`` (validated; none: the defaults)."""

    train: TrainConfig
    prune: PruneSpec | None = None
    prune_at: int | None = None
    params: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        cfg, T = self.train, self.prune_at
        if (self.prune is None) != (T is None):
            raise ValueError(f"prune_at ({T}) and the selection ({self.prune}) go together")
        if T is None:
            if self.params:
                raise ValueError("scoring parameters (--param) need prune-in-run (--prune-at)")
            return
        from .scoring import check_methods, merge_params

        merge_params(self.params)  # refuses unknown or out-of-range parameters now

        checks = [
            (1 <= T < cfg.epochs, f"prune_at must be in [1, epochs) = [1, {cfg.epochs}), got {T}"),
            (cfg.record.mode != "off", "prune_at needs a recorded trajectory (record train or pass)"),
            (cfg.record.record_epochs is None or cfg.record.record_epochs >= T,
             f"prune_at {T} needs at least that many recorded epochs (record_epochs {cfg.record.record_epochs})"),
            (cfg.data.manifest is None, "prune_at and manifest cannot be combined"),
            (not cfg.frozen, "prune_at needs training (not frozen)"),
            (not (self.prune.relabel and self.prune.detector == "aum") or cfg.record.threshold_samples,
             "detector aum needs threshold_samples (--threshold-samples)")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        check_methods([self.prune.method])

    @property
    def hook(self) -> PruneInRun | None:
        """The trainer's end-of-epoch hook (None without prune-in-run)."""
        return None if self.prune is None else PruneInRun(self.prune, self.prune_at, self.params)

    def trainer(self, *, restart: bool = False) -> Trainer:
        """The :class:`Trainer` of this run, with its hook and the summary store's fold."""
        from .scoring.online import SummaryFold

        return Trainer(self.train, restart=restart, prune=self.hook, fold=SummaryFold())
