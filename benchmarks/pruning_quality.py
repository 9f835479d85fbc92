"""Pruning quality: test accuracy after pruning by each scorer, at each ratio, over seeds.

For every seed:

1. **record**: train ``--record-epochs`` T epochs on the whole training set, recording every
   sample's logits (``record="train"``, the paper's setting).  Every scorer except
   ``forgetting_full`` reads this one trajectory.
2. **full**: train the whole budget, ``--epochs`` E, on the whole training set, also
   recording.  Its final test accuracy is the unpruned baseline (ratio 0), and its
   trajectory gives ``forgetting_full``: forgetting events counted over the whole run, as
   Toneva et al. do.  ``forgetting`` is the same count over the T-epoch trajectory.
3. **cells**: for each scorer and ratio, ``select`` (``--policy``, class-balanced by default;
   no relabelling, no outlier removal: this measures the ranking alone), write the manifest,
   retrain from scratch for E epochs on the kept samples (``TrainConfig(manifest=...)``),
   evaluate top-1 on the test set.

``--trajectory prefix`` skips step 1: the scores come from the first T epochs of the full run
(``score_store(first_epochs=T)``), the way the paper records them, and their cost is what the
full run had cost had it stopped after T epochs.

Cost of a score, in sample-epochs (training samples processed by the optimiser): T x N for
the scorers of the T-epoch trajectory, E x N for ``forgetting_full``, 0 for ``random``.
``el2n`` is one model's EL2N at epoch T (the trajectory's last); Paul et al. average 10 models
at about 10% of training, which would cost 10 x T x N.

Every finished cell is written at once to ``RESULTS/pruning_quality_<dataset>.json``; a rerun
skips finished cells, and a killed training run resumes from its checkpoint in ``--work``.
Runs with the same configuration but other ``--scorers`` / ``--ratios`` / ``--seeds`` add to
the same file; the markdown table and the plot are rebuilt from everything in it.

Commands (results in ``benchmarks/results/``; the ones that produced the committed results)::

    # scikit-learn digits: every scorer at every ratio, 3 seeds (~4 min on 2 idle cores)
    python benchmarks/pruning_quality.py --dataset digits --epochs 10 --record-epochs 3 --seeds 0 1 2
    # Fashion-MNIST, 5,000-image class-stratified training subset, the full 10,000-image test set:
    # every scorer at 30% (~18 min), then the whole ratio grid for entropy and random (~16 min)
    python benchmarks/pruning_quality.py --dataset fashion-mnist --n-train 5000 --epochs 10 --record-epochs 3 \\
        --batch-size 128 --seeds 0 1 --ratios 0.3
    python benchmarks/pruning_quality.py --dataset fashion-mnist --n-train 5000 --epochs 10 --record-epochs 3 \\
        --batch-size 128 --seeds 0 1 --scorers entropy random --ratios 0.1 0.2 0.3 0.4 0.5
    # rebuild the table and plot from the JSON only
    python benchmarks/pruning_quality.py --dataset fashion-mnist --n-train 5000 --epochs 10 --record-epochs 3 \\
        --batch-size 128 --report-only
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (METRICS, ResultsFile, add_common_args, base_config, describe_setup,  # noqa: E402
                     final_metrics, finish_common_args, fmt_pm, format_metrics, mean_std, sample_epochs, start,
                     task_of, train, train_config)

from dprune.scoring import METHODS  # noqa: E402
from dprune.scoring import score_store  # noqa: E402
from dprune.select import select, write_manifest  # noqa: E402
from dprune.store import TrajectoryStore  # noqa: E402
from dprune.train.config import TrainConfig  # noqa: E402

SCORERS = (*METHODS, "forgetting_full")
FULL_RUN_SCORERS = {"forgetting_full": "forgetting"}  # scorer name -> library method on the full run
DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, epochs_help="E: epochs of the full run and of every retraining.", default_seeds=[0, 1])
    p.add_argument("--policy", choices=("class", "global"), default="class", help="Selection policy.")
    p.add_argument("--trajectory", choices=("own", "prefix"), default="own",
                   help="own: a separate T-epoch run with its own (compressed) schedule; prefix: the first T epochs "
                        "of the full E-epoch run, as the paper records them (cost counted as if it stopped there).")
    p.add_argument("--scorers", nargs="+", choices=SCORERS, default=list(SCORERS), metavar="SCORER",
                   help=f"Scorers to run (default all: {', '.join(SCORERS)}).")
    p.add_argument("--ratios", type=float, nargs="+", default=list(DEFAULT_RATIOS),
                   help="Prune ratios in (0, 1); ratio 0 is the full run.")
    args = p.parse_args(argv)
    bad = [r for r in args.ratios if not 0 < r < 1]
    if bad:
        p.error(f"ratios must lie in (0, 1), got {bad}")
    if not 2 <= args.record_epochs <= args.epochs:
        p.error(f"--record-epochs must be in [2, --epochs] (the temporal scorers need 2 epochs), "
                f"got {args.record_epochs}")
    return finish_common_args(args, "pruning_quality")


def experiment_config(args, data: dict) -> dict:
    """What every cell depends on (seeds, scorers and ratios are the cells themselves)."""
    return {**base_config(args, data), "policy": args.policy,
            # Only recorded when not the default, so results files made before the option stay valid.
            **({"trajectory": args.trajectory} if args.trajectory != "own" else {})}


def cell_key(seed: int, scorer: str, ratio: float) -> str:
    return f"seed{seed}/{scorer}/{ratio:g}"


class Sweep:
    """The runs of one seed, trained lazily: only what an unfinished cell needs."""

    def __init__(self, args, seed: int, data_root: str | None, results: ResultsFile):
        self.args, self.seed, self.data_root, self.results = args, seed, data_root, results
        self.dir = args.work / f"seed{seed}"
        self._scores: dict[str, tuple] = {}

    def config(self, name: str, **kw) -> TrainConfig:
        return train_config(self.args, self.dir / name, seed=self.seed, data_root=self.data_root, **kw)

    def source(self, which: str) -> tuple[TrajectoryStore, dict]:
        """Train (or find) the ``record`` or ``full`` run, score it once; return (store, scores).

        With ``--trajectory prefix`` the ``record`` scores are the first T epochs of the full run.
        """
        if which not in self._scores:
            prefix = which == "record" and self.args.trajectory == "prefix"
            run = "full" if prefix else which
            epochs = self.args.record_epochs if which == "record" else self.args.epochs
            t0 = time.perf_counter()
            metrics = train(self.config(run, epochs=self.args.epochs if prefix else epochs, record="train"))
            wall = time.perf_counter() - t0
            key = f"seed{self.seed}/{which}"
            if key not in self.results.cells:
                if prefix:  # what the run had cost had it stopped after T epochs
                    cell = {"cost": sample_epochs(metrics[:epochs]), "epochs": epochs, "source": "full run prefix"}
                else:
                    cell = {**final_metrics(metrics, self.args.task), "cost": sample_epochs(metrics),
                            "epochs": epochs, "wall_s": wall}
                self.results.put(key, cell)
            store = TrajectoryStore.open(self.dir / run / "trajectory")
            methods = list(METHODS) if which == "record" else ["forgetting"]
            t0 = time.perf_counter()
            scores, backend = score_store(store, methods=methods, params={"random": {"seed": self.seed}},
                                          first_epochs=epochs)
            print(f"  scored {store.n_samples} samples x {epochs} epochs of the {run} run ({', '.join(methods)}) "
                  f"in {time.perf_counter() - t0:.2f} s on {backend}", flush=True)
            self._scores[which] = (store, scores)
        return self._scores[which]

    def baseline(self) -> None:
        if f"seed{self.seed}/full" not in self.results.cells:
            self.source("full")

    def cell(self, scorer: str, ratio: float) -> None:
        key = cell_key(self.seed, scorer, ratio)
        if key in self.results.cells:
            return
        which = "full" if scorer in FULL_RUN_SCORERS else "record"
        store, scores = self.source(which)
        method = FULL_RUN_SCORERS.get(scorer, scorer)
        sel = select(scores, store.labels, store.n_classes, method=method, ratio=ratio, policy=self.args.policy,
                     seed=self.seed)
        name = f"{scorer}_r{ratio:g}"
        manifest = self.dir / "manifests" / f"{name}.json"
        write_manifest(manifest, sel, source_run=str(store.run_dir), fingerprint=store.fingerprint,
                       n_classes=store.n_classes, scorer_params={"random": {"seed": self.seed}})
        t0 = time.perf_counter()
        metrics = train(self.config(f"retrain/{name}", epochs=self.args.epochs, record="off",
                                    manifest=str(manifest)))
        wall = time.perf_counter() - t0
        src = self.results.cells[f"seed{self.seed}/{which}"]
        result = final_metrics(metrics, self.args.task)
        self.results.put(key, {
            **result, "n_kept": len(sel.kept), "n_pruned": len(sel.pruned),
            "retrain_cost": sample_epochs(metrics), "wall_s": wall,
            "score_source": "none" if scorer == "random" else
                            f"first {src['epochs']} epochs of the full run" if src.get("source") == "full run prefix"
                            else f"{which} run ({src['epochs']} epochs)",
            "score_cost": 0 if scorer == "random" else src["cost"]})
        print(f"  seed {self.seed} {scorer:>15} {ratio:.0%}: {format_metrics(result, self.args.task)} "
              f"({len(sel.kept)} kept, {wall:.0f} s)", flush=True)


# ---------------------------------------------------------------------------------- report
def _collect(cells: dict, metric: str):
    """{scorer: {ratio: {seed: value}}}, {seed: baseline value}, score cost per scorer, for one metric."""
    acc, base, cost = {}, {}, {}
    for key, v in cells.items():
        parts = key.split("/")
        seed = int(parts[0][4:])
        if parts[1] == "full":
            base[seed] = v[metric]
        elif len(parts) == 3:
            acc.setdefault(parts[1], {}).setdefault(float(parts[2]), {})[seed] = v[metric]
            cost[parts[1]] = (v["score_source"], v["score_cost"])
    return acc, base, cost


def _tables(acc: dict, base: dict, name: str, n_seeds: int) -> list[str]:
    """Markdown: the metric per scorer and ratio, then its change vs the unpruned run."""
    scorers = [s for s in SCORERS if s in acc]
    ratios = sorted({r for s in acc.values() for r in s})
    b_mean, b_std, b_n = mean_std(base.values())

    def line(scorer, paired: bool) -> str:
        cells = []
        for r in ratios:
            per_seed = acc[scorer].get(r, {})
            vals = [a - base[s] for s, a in per_seed.items() if s in base] if paired else list(per_seed.values())
            cells.append(fmt_pm(*mean_std(vals)))
        return "| " + " | ".join([f"`{scorer}`", *cells]) + " |"

    head = ["| scorer | " + " | ".join(f"{r:.0%}" for r in ratios) + " |", "|---|" + "---|" * len(ratios)]
    partial = any(0 < len(acc[s].get(r, {})) < n_seeds for s in scorers for r in ratios)
    seeds = f"n = {n_seeds}" + ("; a value without ± comes from one seed" if partial else "")
    return [f"## {name} (%), mean ± std over seeds ({seeds})", "", *head,
            f"| unpruned (0%) | {fmt_pm(b_mean, b_std, b_n)} |" + " |" * (len(ratios) - 1),
            *(line(s, False) for s in scorers), "",
            f"## {name}: change vs the unpruned run (percentage points, paired by seed)", "", *head,
            *(line(s, True) for s in scorers), ""]


def _recipe(cfg: dict) -> str:
    how = ("the first T epochs of the full E-epoch run, the paper's setting" if cfg.get("trajectory") == "prefix"
           else "a separate run with its own T-epoch schedule")
    return (f"{describe_setup(cfg)} Trajectory: T = {cfg['record_epochs']} epochs ({how}; logits of the training "
            f"forward pass). Every retraining: E = {cfg['epochs']} epochs from scratch on the kept "
            f"samples. Selection: `{cfg['policy']}` policy, no relabelling, no outlier removal.")


def write_report(results: ResultsFile, out_stem: Path) -> str:
    """Write ``<stem>.md`` and ``<stem>.png`` from the results; return the markdown."""
    cfg = results.data["config"]
    d = cfg["dataset"]
    task = task_of(cfg)
    metrics = METRICS[task]
    collected = {key: _collect(results.cells, key) for key in metrics}
    main_key, (main_name, _) = next(iter(metrics.items()))  # the plotted metric
    acc, base, cost = collected[main_key]
    seeds = sorted(base)
    tables = []
    for key, (name, _) in metrics.items():
        tables += _tables(*collected[key][:2], f"Test {name}", len(seeds))
    n_train = d["n_train"]
    full_cost = cfg["epochs"] * n_train
    cost_rows = ["| scorer | scores from | sample-epochs to score | = epochs of the full set | "
                 "share of one full training |", "|---|---|---|---|---|"]
    for s in (s for s in SCORERS if s in cost):
        src, c = cost[s]
        cost_rows.append(f"| `{s}` | {src} | {c:,} | {c / n_train:.3g} | {c / full_cost:.0%} |")
    walls = sum(v.get("wall_s", 0.0) for v in results.cells.values())
    m = results.data.get("machine", {})
    lines = [
        f"# Pruning quality: {d['dataset']}",
        "",
        _recipe(cfg) + f" Seeds: {', '.join(map(str, seeds))} (seed = initialisation, data order, random scorer, "
        "tie-breaks).",
        "",
        *tables,
        "## Cost of the scores",
        "",
        f"Sample-epochs = training samples processed by the optimiser; one full training = E x N = {full_cost:,}. "
        "Retraining on a pruned set costs (1 - ratio) of it on top. `el2n`: one model at epoch T (Paul et al. "
        "average 10 models: 10x this cost).",
        "",
        *cost_rows,
        "",
        f"![{main_name} vs prune ratio]({out_stem.name}.png)",
        "",
        f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, torch {m.get('torch', '?')} with "
        f"{m.get('torch_threads', '?')} thread(s), one run at a time. Training wall time of all cells: "
        f"{walls / 60:.1f} min.",
        "",
        "Commands:",
        "",
        "```bash",
        *results.data.get("commands", []),
        "```",
    ]
    text = "\n".join(lines) + "\n"
    out_stem.with_suffix(".md").write_text(text)
    _plot(acc, base, out_stem.with_suffix(".png"), ylabel=f"test {main_name} (%)",
          title=f"{d['dataset']} ({n_train:,} train)")
    return text


def _plot(acc, base, path: Path, *, ylabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scorers = [s for s in SCORERS if s in acc]
    ratios = sorted({r for s in acc.values() for r in s})
    b_mean, b_std, _ = mean_std(base.values())
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = "os^vD<>pXh*"
    for i, s in enumerate(scorers):
        measured = [r for r in ratios if acc[s].get(r)]
        # A scorer run at one ratio only is a point, not a line drawn from the unpruned run.
        xs = measured if len(measured) == 1 else [0.0] + measured
        stats = [mean_std(acc[s][r].values())[:2] if r else (b_mean, b_std) for r in xs]
        ys = np.array([m for m, _ in stats]) * 100
        es = np.nan_to_num(np.array([e for _, e in stats])) * 100
        style = dict(lw=2.2, color="k") if s == "entropy" else dict(lw=1.2, ls="--" if s == "random" else "-")
        if len(measured) == 1:
            style["ls"] = "none"
        ax.errorbar(np.array(xs) * 100 + (i - len(scorers) / 2) * 0.15, ys, yerr=es, marker=markers[i % len(markers)],
                    ms=4, capsize=2, label=s, **style)
    ax.axhline(b_mean * 100, color="0.5", lw=0.8, ls=":", label="unpruned")
    ax.set_xlabel("prune ratio (%)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"accuracy after pruning and retraining: {title}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> str:
    args = parse_args(argv)
    data_root, results, stem = start(args, argv, "pruning_quality.py", "pruning_quality",
                                     lambda data: experiment_config(args, data))
    if not args.report_only:
        t0 = time.perf_counter()
        for seed in args.seeds:
            print(f"seed {seed}", flush=True)
            sweep = Sweep(args, seed, data_root, results)
            sweep.baseline()
            for scorer in args.scorers:
                for ratio in args.ratios:
                    sweep.cell(scorer, ratio)
        print(f"sweep done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    text = write_report(results, stem)
    print(text)
    return text


if __name__ == "__main__":
    main()
