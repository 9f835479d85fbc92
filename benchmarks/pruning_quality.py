"""Pruning quality in the paper's protocol: does pruning by a trajectory score beat random pruning?

Protocol (arXiv 2412.10091; TDDS, CVPR 2024): per seed s, **one recorded full run** of E epochs
(training seed s) gives the unpruned accuracy and, for free, every prefix trajectory: a score
"at T" reads the first T epochs of that run (``score_store(first_epochs=T)``), as the paper
scores the first 12 of 120 epochs.  Each cell selects by one scorer at one ratio (class policy;
no relabelling or outlier removal: the ranking alone), writes the manifest, and **retrains from
scratch** on the kept samples with training seed 1000 + s (a seed other than the scoring run's),
for E epochs ("same epochs": fewer steps, the paper's protocol) or for as many steps as the full
run ("same steps": E * N / kept epochs), then evaluates top-1 on the test set.  Ties are broken
by a seeded stream of each scorer's own (never the random scorer's).  Prune-in-run cells train
one run that records T epochs, prunes itself and carries on (``dprune.runs.TrainRun`` with ``prune_at``).

Scorers: ``entropy``, ``el2n``, ``dual``, ``reverse_entropy`` (prunes the hardest: a sanity
check) at T; ``aum`` and ``forgetting_full`` over the whole run (T = E); ``random``.

The quantity reported is the **paired difference** Δ(scorer − random) per seed (same seed, same
ratio); the verdict rule: a scorer beats random at a ratio when Δ > 0 in at least 4 of 5
seeds (3 of 3 where it has 3 seeds), loses to it when Δ < 0 as often, else "no difference".

Every cell is one JSON file under ``benchmarks/results/pruning_quality/cells/`` (resumable per
cell; two processes may run side by side: a cell whose run another process holds is done
later); ``--report-only`` rebuilds ``report.md`` and its figures there from those files alone.

Commands (the committed results: 164 cells, 6.1 h of one core, about 3 h with two processes on this 2-core machine)::

    OMP_NUM_THREADS=1 python benchmarks/pruning_quality.py &
    OMP_NUM_THREADS=1 python benchmarks/pruning_quality.py &
    python benchmarks/pruning_quality.py --report-only
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, Cells, machine, prepare_data, run_cells, train_config  # noqa: E402

from dprune.manifest import load_manifest, write_manifest  # noqa: E402
from dprune.pruning import prune_store  # noqa: E402
from dprune.scoring import load_or_score  # noqa: E402
from dprune.select import PruneSpec, select  # noqa: E402
from dprune.runs import TrainRun, selection  # noqa: E402
from dprune.stages import train  # noqa: E402
from dprune.store import open_store  # noqa: E402

# scorer -> (library method, score over the prefix of T epochs (True) or the whole run (False))
SCORERS = {"entropy": ("entropy", True), "el2n": ("el2n", True), "dual": ("dual", True),
           "reverse_entropy": ("entropy", True), "aum": ("aum", False), "forgetting_full": ("forgetting", False),
           "random": ("random", False)}
RETRAIN_SEED = 1000


@dataclasses.dataclass(frozen=True)
class Plan:
    """The experiment of issue 14 (or a small one for tests)."""

    sizes: tuple = (None,)  # training-set sizes of the main grid (None: the whole set)
    seeds5: tuple = (0, 1, 2, 3, 4)
    seeds3: tuple = (0, 1, 2)
    main5: tuple = ("entropy", "el2n", "random")
    main3: tuple = ("dual", "aum", "forgetting_full", "reverse_entropy")
    ratios: tuple = (0.3, 0.5, 0.7)
    T: int = 2
    cost_scorers: tuple = ("entropy", "el2n")
    cost_Ts: tuple = (1, 2, 4, 6)
    cost_ratio: float = 0.5
    small_sizes: tuple = (5000, 15000)
    small_scorers: tuple = ("entropy", "el2n", "random")
    small_ratios: tuple = (0.3, 0.5)
    steps_scorers: tuple = ("entropy", "random")
    steps_ratio: float = 0.5
    pir_ratios: tuple = (0.3, 0.5, 0.7)


PLANS = {
    "paper": Plan(),
    "smoke": Plan(seeds5=(0, 1), seeds3=(0,), main5=("entropy", "random"), main3=("aum", "reverse_entropy"),
                  ratios=(0.5,), T=1, cost_Ts=(1, 2), small_sizes=(600,), small_scorers=("entropy", "random"),
                  small_ratios=(0.5,), pir_ratios=(0.5,)),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", choices=sorted(PLANS), default="paper")
    p.add_argument("--dataset", choices=("fashion-mnist", "digits"), default="fashion-mnist")
    p.add_argument("--data-root", help="Folder of the Fashion-MNIST idx files (default: Debian's package).")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--epochs", type=int, default=6, help="E: epochs of every run.")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--max-steps-per-epoch", type=int, help="Cut every epoch short (smoke tests only).")
    p.add_argument("--work", type=Path, default=Path("runs/bench/pruning_quality"))
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR / "pruning_quality")
    p.add_argument("--report-only", action="store_true", help="Only rebuild the report from the cell files.")
    return p.parse_args(argv)


def experiment_config(a) -> dict:
    return {"plan": a.plan, "plan_cells": dataclasses.asdict(PLANS[a.plan]), "dataset": a.dataset, "model": a.model,
            "epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "max_steps_per_epoch": a.max_steps_per_epoch,
            "policy": "class", "retrain_seed": f"{RETRAIN_SEED} + s"}


def size_name(n) -> str:
    return "all" if n is None else f"{n // 1000}k" if n % 1000 == 0 else str(n)


class Experiment:
    def __init__(self, a, cells: Cells):
        self.a, self.cells, self.plan = a, cells, PLANS[a.plan]
        self._data: dict = {}

    def data(self, size) -> tuple[str | None, dict]:
        if size not in self._data:
            if self.a.dataset == "digits":
                self._data[size] = prepare_data("digits", self.a.work)
            else:
                self._data[size] = prepare_data("fashion-mnist", self.a.work, n_train=size, source=self.a.data_root)
        return self._data[size]

    def config(self, size, name: str, seed: int, **kw):
        a = self.a
        root, _ = self.data(size)
        return train_config(a.work / size_name(size) / f"seed{seed}" / name, seed=seed, data_root=root,
                            dataset=a.dataset, model=a.model, epochs=kw.pop("epochs", a.epochs),
                            batch_size=a.batch_size, lr=a.lr, max_steps=a.max_steps_per_epoch, **kw)

    # --------------------------------------------------------------------------- cells
    def recorded(self, size, seed: int):
        """The recorded full run of a seed (trained once; every scorer reads it)."""
        return train(self.config(size, "full", seed, record="train"))

    def record_cell(self, size, seed: int) -> dict:
        run = self.recorded(size, seed)
        return {"acc": run.metrics[-1]["test_metric"], "cost": run.cost,
                "epoch_cost": [m["samples_seen"] for m in run.metrics], "wall_s": run.seconds,
                "n_train": int(run.metrics[0]["samples_seen"])}

    def manifest(self, size, seed: int, scorer: str, T: int, ratio: float) -> tuple[Path, dict]:
        """Select by ``scorer`` over the first ``T`` epochs of the seed's recorded run."""
        run = self.recorded(size, seed)
        store = open_store(Path(run.config.train.out) / "trajectory")
        method, prefix = SCORERS[scorer]
        first = T if prefix else None
        spec = PruneSpec(method=method, ratio=ratio, policy="class", seed=seed)
        params = {"random": {"seed": seed}}
        path = Path(run.config.train.out).parent / "manifests" / f"{scorer}_T{T}_r{ratio:g}.json"
        if scorer == "reverse_entropy":
            scores, meta, _ = load_or_score(store, methods=["entropy"], params=params, first_epochs=first)
            scores = dict(scores, reverse_entropy=-scores["entropy"])
            sel = select(scores, store.labels, store.n_classes, spec, method="reverse_entropy")
            write_manifest(path, sel, source_run=str(store.run_dir), made_from=store.identity(first),
                           n_classes=store.n_classes, scores_meta=meta)
        else:
            done = prune_store(store, spec, path, params=params, first_epochs=first)
            meta = done.scores_meta
        return path, {"clipped": meta.get("clipped", {}), "score_epochs": first or store.epochs_completed}

    def retrain_cell(self, size, seed: int, scorer: str, T: int, ratio: float, mode: str) -> dict:
        path, info = self.manifest(size, seed, scorer, T, ratio)
        m = load_manifest(path)
        rec = self.recorded(size, seed)
        epochs = self.a.epochs
        if mode == "steps":  # as many optimiser steps as the full run
            epochs = max(1, round(self.a.epochs * m.data["n_samples"] / len(m.kept)))
        name = f"retrain/{scorer}_T{T}_r{ratio:g}_{mode}"
        run = train(self.config(size, name, RETRAIN_SEED + seed, record="off", manifest=str(path), epochs=epochs))
        score_cost = 0 if scorer == "random" else sum(rec.metrics[k]["samples_seen"] for k in range(info["score_epochs"]))
        return {"acc": run.metrics[-1]["test_metric"], "n_kept": len(m.kept), "epochs": epochs,
                "retrain_cost": run.cost, "score_cost": score_cost, "wall_s": run.seconds, **info}

    def pir_cell(self, size, seed: int, T: int, ratio: float) -> dict:
        cfg = self.config(size, f"prune-in-run/entropy_T{T}_r{ratio:g}", RETRAIN_SEED + seed, record="train",
                          record_epochs=T)
        # The score alone (clean labels), as the committed cells.
        spec = selection(dict(ratio=ratio, method="entropy", policy="class", relabel=False, remove_outliers=None),
                         cfg.seed)
        run = train(TrainRun(cfg, spec, T))
        m = load_manifest(Path(cfg.out) / "manifest.json")
        return {"acc": run.metrics[-1]["test_metric"], "n_kept": len(m.kept), "cost": run.cost, "wall_s": run.seconds}

    def overlap_cell(self, size, seed: int, ratio: float) -> dict:
        """Spearman correlation of the scores and Jaccard overlap of the pruned sets, scorer pairs."""
        from scipy.stats import spearmanr

        p = self.plan
        names = [s for s in p.main5 + p.main3 if s != "random"]
        pruned, values = {}, {}
        for s in names:
            path, _ = self.manifest(size, seed, s, p.T, ratio)
            pruned[s] = set(load_manifest(path).data["pruned"])
            run = self.recorded(size, seed)
            store = open_store(Path(run.config.train.out) / "trajectory")
            method, prefix = SCORERS[s]
            sc, _, _ = load_or_score(store, methods=[method], first_epochs=p.T if prefix else None)
            values[s] = -sc[method] if s == "reverse_entropy" else sc[method]
        out = {"scorers": names, "spearman": [], "jaccard": []}
        for a_ in names:
            out["spearman"].append([float(spearmanr(values[a_], values[b], nan_policy="omit")[0]) for b in names])
            out["jaccard"].append([len(pruned[a_] & pruned[b]) / max(1, len(pruned[a_] | pruned[b])) for b in names])
        return out

    def todo(self) -> list:
        p, E = self.plan, self.a.epochs
        work = []
        for size in p.sizes:
            for s in p.seeds5:
                work.append((f"record/{size_name(size)}/seed{s}", lambda size=size, s=s: self.record_cell(size, s)))
            for s in p.seeds5:  # the 5-seed scorers first, seed by seed
                for scorer in p.main5:
                    for r in p.ratios:
                        work.append(self._retrain(size, s, scorer, p.T, r, "epochs"))
            for s in p.seeds3:
                for scorer in p.main3:
                    for r in p.ratios:
                        work.append(self._retrain(size, s, scorer, p.T, r, "epochs"))
                for scorer in p.cost_scorers:
                    for T in p.cost_Ts:
                        if T <= E:
                            work.append(self._retrain(size, s, scorer, T, p.cost_ratio, "epochs"))
                for scorer in p.steps_scorers:
                    work.append(self._retrain(size, s, scorer, p.T, p.steps_ratio, "steps"))
                for r in p.pir_ratios:
                    work.append((f"pir/{size_name(size)}/seed{s}/entropy/T{p.T}/r{r:g}",
                                 lambda size=size, s=s, r=r: self.pir_cell(size, s, p.T, r)))
                work.append((f"overlap/{size_name(size)}/seed{s}/r0.5",
                             lambda size=size, s=s: self.overlap_cell(size, s, 0.5)))
        for size in p.small_sizes:
            for s in p.seeds3:
                work.append((f"record/{size_name(size)}/seed{s}", lambda size=size, s=s: self.record_cell(size, s)))
                for scorer in p.small_scorers:
                    for r in p.small_ratios:
                        work.append(self._retrain(size, s, scorer, p.T, r, "epochs"))
        return work

    def _retrain(self, size, s, scorer, T, r, mode):
        if not SCORERS[scorer][1]:
            T = self.a.epochs  # scored over the whole run (or not at all: random)
        key = f"retrain/{size_name(size)}/seed{s}/{scorer}/T{T}/r{r:g}/{mode}"
        return key, lambda: self.retrain_cell(size, s, scorer, T, r, mode)


def main(argv=None) -> str:
    a = parse_args(argv)
    torch.set_num_threads(1)
    cells = Cells(a.results_dir, experiment_config(a))
    if not a.report_only:
        cells.note_run({"machine": machine(), "command": " ".join(["python", "benchmarks/pruning_quality.py",
                                                                  *(sys.argv[1:] if argv is None else argv)]),
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        exp = Experiment(a, cells)
        for size in (*PLANS[a.plan].sizes, *PLANS[a.plan].small_sizes):
            exp.data(size)
        run_cells(cells, exp.todo())
    from pruning_report import write_report

    return write_report(cells)


if __name__ == "__main__":
    print(main())
