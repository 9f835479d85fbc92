"""The full method on noisy data against same-cost controls, and label cleaning against cleanlab.

The claim under test ("Data Pruning Can Do More", arXiv 2412.10091): pruning by the early
trajectory, with relabelling and outlier removal, gives a better model than the full noisy data
for less compute.  Setting: the 60,000 Fashion-MNIST training images, or a class-stratified
subset of them (``--n-train``); test: the 10,000 clean test images; label noise ``KIND:RATE``
with KIND

- ``symmetric``: uniform to another class;
- ``class``: class c -> c + 1 (a fixed confusion per class);
- ``instance``: each chosen label goes to the class a separately trained model confuses the
  image with most, images the model finds ambiguous chosen more often
  (:func:`dprune.data.instance_dependent_noise`; the model: two halves cross-fitted on the clean
  labels, ``--instance-epochs`` epochs each, so every image is judged by a model that did not
  train on it).

Schedule: E epochs (``--epochs``, long enough that the noisy run memorises its labels: its
test accuracy peaks, then falls; the report shows the curve), prune-in-run at T = E / 10 as the
paper does, detectors reading at most E / 5 epochs.  Per noise setting and seed s (noise seed
s, training seed s), the arms (training runs, each a cell):

========== ==================================================================================
noisy      the full noisy data, E epochs; records its first E / 5 epochs (the detection cells
           and the paper's protocol read them)
default    ``dprune run``'s prune-in-run with the library's defaults (:data:`dprune.select.RUN_DEFAULTS`)
random     control: random prune-in-run at T keeping as many samples as ``default``, no cleaning
short      control: the full noisy data for round(cost(default) / N) epochs (same cost)
nobudget   ``default`` with ``budget="score"``: the ratio counts the score's pruning only, on
           top of the detector's removals (H-budget's comparison)
nobudget_short  control: the full noisy data at the cost of ``nobudget``
score      entropy prune-in-run at the default ratio, no cleaning (the score alone); this arm and
           the next three count the ratio as the paper does (``budget="score"``)
relabel    ... + the paper's argmax relabelling
paper      ... + 1% outliers removed (the paper's full method)
dual       the ``dual`` score at the default ratio, no cleaning
cleanlab   cleanlab's ``find_label_issues`` (its default rule) on 5-fold out-of-sample
           probabilities (folds of ``--cv-epochs``), flagged samples removed, E epochs; the
           folds' training counted in its cost
protocol   the paper's protocol with the default selection: the noisy run's first T epochs
           scored, retrained from scratch for E epochs
cleaned    retraining on the cleaned labels: the default detector's flags on the noisy run's
           first T epochs removed (no pruning by score), E epochs from scratch; its cost counts
           the T recorded epochs
cleaned_random  control: as many samples as ``cleaned`` keeps, drawn at random, E epochs
cleaned_short   control: the full noisy data at the cost of ``cleaned``
checked    ``default`` with ``confident.rate`` set to the share of wrong labels among ``--checked``
           training samples drawn uniformly (the injected truth stands in for the person who
           checks them; the draw of ``detector_checked.py``, seeded by the seed)
clean      the clean labels, E epochs (the ceiling; one per seed)
========== ==================================================================================

Detection cells (per noise setting and seed): the default detector and its variants on the
noisy run's first ``--detect-T`` epochs, against every ``filter_by`` rule of cleanlab on its
5-fold probabilities (``--cv-epochs`` per fold: 5 x 4 epochs, and 5 x 1 for the matched cost).

The verdict rule (declared in ``benchmarks/RESULTS.md`` before the test settings ran): a way
beats another when the paired per-seed differences are positive by a one-sided paired t-test
at p < 0.05, or positive in every one of at least 5 seeds.

Cells are JSON files under ``benchmarks/results/noisy/cells/``; the work folder holds the runs
(resumable: a killed cell resumes its training), and two processes can share the sweep.
``--report-only`` rebuilds ``report.md`` from the cells.  ``--only PREFIX`` runs the cells whose
key starts with PREFIX (e.g. ``detect/symmetric0.2``).  Order: seed by seed, every setting's
headline arms (noisy, default, random, short) and detection cell; then the other arms on the
first ``--rest-seeds`` seeds.

    OMP_NUM_THREADS=1 python benchmarks/noisy_method.py --noise symmetric:0.2 &
    python benchmarks/noisy_method.py --report-only
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS_DIR, Cells, NotReady, auc, checked_rate, machine, noise_setting_parser,  # noqa: E402
                     prepare_data, prf, run_cells, store_and_truth, train_config)
from mislabel_detection import custom_manifest, predict  # noqa: E402

from dprune.data import build_dataset, instance_dependent_noise  # noqa: E402
from dprune.pruning import prune_store  # noqa: E402
from dprune.select import RUN_DEFAULTS  # noqa: E402
from dprune.runs import TrainRun, selection  # noqa: E402
from dprune.stages import train  # noqa: E402
from dprune.train.loop import Trainer  # noqa: E402

KINDS = ("symmetric", "class", "instance")
HEADLINE = ("noisy", "default", "random", "short")
ARMS = HEADLINE + ("nobudget", "nobudget_short", "score", "relabel", "paper", "dual", "cleanlab", "protocol",
                   "cleaned", "cleaned_random", "cleaned_short", "checked")
# The pruned arm whose cost each same-cost short run matches, and the arm each control is made from.
SHORT_OF = {"short": "default", "nobudget_short": "nobudget", "cleaned_short": "cleaned"}
CONTROL_OF = {"random": "default", "cleaned_random": "cleaned", **SHORT_OF}
CLEANLAB_FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
                    "low_normalized_margin", "low_self_confidence")


noise_setting = noise_setting_parser(KINDS)


def name_of(noise) -> str:
    return f"{noise[0]}{noise[1]:g}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("fashion-mnist", "digits"), default="fashion-mnist",
                   help="digits: smoke tests only.")
    p.add_argument("--data-root")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--epochs", type=int, default=20, help="E of every run.")
    p.add_argument("--detect-T", type=int, nargs="+", help="Epochs the detectors read (default: 1 .. E/5).")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--cv-epochs", type=int, nargs="+", default=[4, 1],
                   help="Epochs of each cleanlab fold: the first is its arm and its usual cost, the rest matched costs.")
    p.add_argument("--instance-epochs", type=int, default=3, help="Epochs of the models that make instance noise.")
    p.add_argument("--noise", type=noise_setting, nargs="+", default=[noise_setting("symmetric:0.2")])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--rest-seeds", type=int, default=3,
                   help="The arms other than the headline ones (and clean) run on the first this many seeds.")
    p.add_argument("--parts", nargs="+", choices=("detect",), default=["detect"],
                   help="Besides the arms: the detection cells.")
    p.add_argument("--arms", nargs="+", choices=ARMS + ("clean",), default=list(ARMS) + ["clean"])
    p.add_argument("--checked", type=int, default=500, help="Labels checked by hand for the checked arm.")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--max-steps-per-epoch", type=int, help="Smoke tests only.")
    p.add_argument("--n-train", type=int, help="A class-stratified subset of the training images (default: all).")
    p.add_argument("--only", help="Run only the cells whose key starts with this.")
    p.add_argument("--work", type=Path, default=Path("runs/bench/noisy"))
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR / "noisy")
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args(argv)
    if a.epochs < 10:
        p.error("--epochs must be >= 10 (T = E / 10)")
    a.T = a.epochs // 10
    a.detect_T = a.detect_T or list(range(1, a.epochs // 5 + 1))
    if max(a.detect_T) > a.epochs // 5:
        p.error(f"--detect-T reads at most E / 5 = {a.epochs // 5} epochs")
    return a


class Experiment:
    def __init__(self, a, cells: Cells):
        self.a, self.cells = a, cells
        self.root, self.data_desc = (prepare_data("digits", a.work) if a.dataset == "digits" else
                                     prepare_data("fashion-mnist", a.work, n_train=a.n_train, source=a.data_root))

    # ------------------------------------------------------------------------------ set-up
    def config(self, noise, seed: int, name: str, *, epochs: int | None = None, clean: bool = False,
               eval_every: int = 0, **kw):
        """A run of this sweep; ``eval_every=1`` for the test-accuracy curve (memorisation)."""
        a = self.a
        if clean:
            noise_kw = {}
        elif noise[0] == "instance":
            noise_kw = {"labels_file": str(self.instance_labels(noise, seed))}
        else:
            noise_kw = {"label_noise": noise[1], "noise_kind": noise[0], "noise_seed": seed}
        where = a.work / ("clean" if clean else name_of(noise)) / f"seed{seed}" / name
        cfg = train_config(where, seed=seed, data_root=self.root, dataset=a.dataset, model=a.model,
                           epochs=epochs or a.epochs, batch_size=a.batch_size, lr=a.lr,
                           max_steps=a.max_steps_per_epoch, **noise_kw, **kw)
        return cfg.replace(eval_every=eval_every)

    def instance_labels(self, noise, seed: int) -> Path:
        """Instance-dependent noisy labels of seed ``seed`` (made once, from cross-fitted halves)."""
        path = self.a.work / name_of(noise) / f"seed{seed}" / "labels.npy"
        if path.exists():
            return path
        clean = build_dataset(self.a.dataset, self.root)[0].labels
        probs = self.instance_probs(seed)
        noisy, _ = instance_dependent_noise(clean, probs, noise[1], seed=seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, noisy)
        return path

    def instance_probs(self, seed: int) -> np.ndarray:
        """Probabilities [N, C] of each training image from a model trained on the other half (clean labels)."""
        where = self.a.work / "instance-model" / f"seed{seed}"
        cache = where / "probs.npy"
        if cache.exists():
            return np.load(cache)
        data = _CleanData(build_dataset(self.a.dataset, self.root)[0])
        N = data.n_samples
        order = np.random.default_rng([seed, 0x1D]).permutation(N)
        halves = [np.sort(order[: N // 2]), np.sort(order[N // 2:])]
        probs = np.full((N, data.n_classes), np.nan)
        for k in (0, 1):
            fit_on, judge = halves[k], halves[1 - k]
            manifest = where / f"half{k}.json"
            custom_manifest(manifest, data, kept=fit_on, labels=data.labels, removed=judge,
                            reason=f"judged by the model of half {k}")
            cfg = self.config(None, seed, "x", clean=True).replace(
                out=str(where / f"half{k}"), epochs=self.a.instance_epochs, record="off", seed=7000 + seed,
                manifest=str(manifest))
            train(cfg)
            trainer = Trainer(cfg)
            trainer.fit()  # finished: loads the model
            probs[judge] = predict(trainer, judge)
        np.save(cache, probs)
        return probs

    # ------------------------------------------------------------------------------ runs
    def noisy(self, noise, seed):
        """The full noisy run (recording its first E / 5 epochs), its store and the truth."""
        a = self.a
        run = train(self.config(noise, seed, "noisy", record="train", record_epochs=a.epochs // 5, eval_every=1))
        return (run, *store_and_truth(run))

    def pir(self, noise, seed, name: str, params: dict | None = None, **spec):
        a = self.a
        cfg = self.config(noise, seed, name, record_epochs=a.T)
        return train(TrainRun(cfg, selection(spec, cfg.seed), a.T, params or {}), rerun_if_changed=True)

    def default_spec(self) -> dict:
        d = RUN_DEFAULTS
        return {"method": d.method, "ratio": d.ratio, "budget": d.budget, "policy": d.policy, "relabel": d.relabel,
                "detector": d.detector, "mislabelled": d.mislabelled, "remove_outliers": d.outliers}

    def arm(self, noise, seed, arm: str) -> dict:
        if arm == "noisy":
            run = self.noisy(noise, seed)[0]
        elif arm in ("default", "nobudget"):
            spec = {**self.default_spec(), **({"budget": "score"} if arm == "nobudget" else {})}
            run = self.pir(noise, seed, arm, **spec)
            return {**self._result(run, noise, seed, arm), "spec": spec}
        elif arm == "checked":
            flipped, m = self.noisy(noise, seed)[2]["flipped"].astype(bool), self.a.checked
            params = {"confident": {"rate": checked_rate(flipped, m, np.random.default_rng([seed, m]))}}
            run = self.pir(noise, seed, arm, params, **self.default_spec())
            return {**self._result(run, noise, seed, arm), "spec": self.default_spec(), "params": params, "checked": m}
        elif arm in CONTROL_OF and not self.cells.has(f"arm/{name_of(noise)}/seed{seed}/{CONTROL_OF[arm]}"):
            raise NotReady(f"{arm} needs the {CONTROL_OF[arm]} arm of {name_of(noise)} seed {seed}")
        elif arm == "cleaned_random":
            return self.random_retrain_arm(noise, seed)
        elif arm == "random":
            m = self._manifest(noise, seed, "default")
            kept_observed = m["n_kept"] - len(m["unobserved"])
            run = self.pir(noise, seed, "random", method="random", relabel=False, remove_outliers=None,
                           ratio=(m["n_observed"] - kept_observed) / m["n_observed"], policy=RUN_DEFAULTS.policy)
        elif arm in SHORT_OF:
            pruned = self.cells.get(f"arm/{name_of(noise)}/seed{seed}/{SHORT_OF[arm]}")
            n = self.data_desc["n_train"]  # the full data's samples per epoch
            run = train(self.config(noise, seed, arm, epochs=max(1, round(pruned["cost"] / n)), record="off"))
        elif arm in ("score", "relabel", "paper", "dual"):
            spec = {"method": "dual" if arm == "dual" else "entropy", "ratio": RUN_DEFAULTS.ratio, "budget": "score",
                    "policy": RUN_DEFAULTS.policy, "relabel": arm in ("relabel", "paper"), "detector": "argmax",
                    "mislabelled": "relabel",
                    "remove_outliers": 0.01 if arm == "paper" else None}
            run = self.pir(noise, seed, arm, **spec)
            return {**self._result(run, noise, seed, arm), "spec": spec}
        elif arm == "cleanlab":
            return self.cleanlab_arm(noise, seed)
        elif arm == "protocol":
            return self.retrain_arm(noise, seed, "protocol", RUN_DEFAULTS)
        elif arm == "cleaned":
            return self.retrain_arm(noise, seed, "cleaned", dataclasses.replace(RUN_DEFAULTS, ratio=0.0))
        else:
            raise ValueError(arm)
        return self._result(run, noise, seed, arm)

    def clean_cell(self, seed) -> dict:
        run = train(self.config(None, seed, "clean", clean=True, record="off", eval_every=1))
        return self._result(run, None, seed, "clean")

    def _manifest_path(self, noise, seed, name) -> Path:
        """Where arm ``name``'s selection is: its prune-in-run folder, or the folder of its retraining."""
        return self.a.work / name_of(noise) / f"seed{seed}" / name / "manifest.json"

    def _manifest(self, noise, seed, name) -> dict:
        from dprune.manifest import load_manifest

        return load_manifest(self._manifest_path(noise, seed, name)).data

    def _result(self, run, noise, seed, arm) -> dict:
        out = {"acc": run.metrics[-1]["test_metric"], "cost": run.cost,
               "curve": [m["test_metric"] for m in run.metrics], "epoch_samples": [m["samples_seen"] for m in run.metrics],
               "epochs": len(run.metrics), "wall_s": run.seconds}
        if noise is not None and self._manifest_path(noise, seed, arm).exists():
            out.update(self._cleaning(noise, seed, arm))
        return out

    def _cleaning(self, noise, seed, name) -> dict:
        """How the manifest's decisions met the truth: noise among the kept labels, relabel precision."""
        _, store, truth = self.noisy(noise, seed)
        m = self._manifest(noise, seed, name)
        clean, flipped = truth["clean_labels"], truth["flipped"]
        kept = np.asarray(m["kept"], np.int64)
        labels = store.labels.copy()
        rel = {int(k): v for k, v in m["relabelled"].items()}
        if rel:
            labels[list(rel)] = list(rel.values())
        removed = np.asarray([o["index"] for o in m["removed_outliers"]], np.int64)
        return {"n_kept": len(kept), "kept_noise": float((labels[kept] != clean[kept]).mean()),
                "relabelled": len(rel), "relabel_right": float(np.mean([clean[i] == v for i, v in rel.items()]))
                if rel else float("nan"), "removed": len(removed),
                "removed_flipped": float(flipped[removed].mean()) if len(removed) else float("nan"),
                "pruned_flipped": float(flipped[np.asarray(m["pruned"], np.int64)].mean()) if m["pruned"] else
                float("nan")}

    # ------------------------------------------------------------------------------ cleanlab
    def cleanlab_probs(self, noise, seed, cv_epochs: int):
        """Out-of-sample probabilities [N, C] from K fold models of ``cv_epochs``, and their cost."""
        from sklearn.model_selection import StratifiedKFold

        a = self.a
        _, store, _ = self.noisy(noise, seed)
        where = a.work / name_of(noise) / f"seed{seed}" / f"cleanlab-{a.folds}x{cv_epochs}"
        cache = where / "probs.npz"
        if cache.exists():
            with np.load(cache) as z:
                return z["probs"], int(z["cost"])
        noisy = store.labels
        N, C = store.n_samples, store.n_classes
        probs = np.full((N, C), np.nan)
        cost = 0
        folds = StratifiedKFold(a.folds, shuffle=True, random_state=seed).split(np.zeros(N), noisy)
        for k, (fit_on, held) in enumerate(folds):
            manifest = where / f"fold{k}.json"
            custom_manifest(manifest, store, kept=fit_on, labels=noisy, removed=held,
                            reason=f"held out: fold {k} of {a.folds}")
            cfg = self.config(noise, seed, "x").replace(out=str(where / f"fold{k}"), epochs=cv_epochs,
                                                        record="off", manifest=str(manifest))
            cost += train(cfg).cost
            trainer = Trainer(cfg)
            trainer.fit()  # finished: loads the model
            probs[held] = predict(trainer, held)
        np.savez(cache, probs=probs, cost=cost)
        return probs, cost

    def cleanlab_arm(self, noise, seed) -> dict:
        from cleanlab.filter import find_label_issues

        _, store, truth = self.noisy(noise, seed)
        probs, fold_cost = self.cleanlab_probs(noise, seed, self.a.cv_epochs[0])
        issues = find_label_issues(store.labels, probs, n_jobs=1)
        where = self.a.work / name_of(noise) / f"seed{seed}"
        manifest = where / "cleanlab-manifest.json"
        custom_manifest(manifest, store, kept=np.flatnonzero(~issues), labels=store.labels,
                        removed=np.flatnonzero(issues), reason="cleanlab find_label_issues")
        run = train(self.config(noise, seed, "cleanlab", record="off", manifest=str(manifest)))
        out = self._result(run, noise, seed, "cleanlab")
        out.update(cost=run.cost + fold_cost, train_cost=run.cost, fold_cost=fold_cost, flags=prf(issues, truth["flipped"]),
                   n_kept=int((~issues).sum()),
                   kept_noise=float(truth["flipped"][~issues].mean()))
        return out

    def retrain_arm(self, noise, seed, arm: str, spec) -> dict:
        """``spec`` applied to the noisy run's first T epochs, then E epochs from scratch on what it
        keeps; the cost counts the T recorded epochs (the paper's protocol, or ``cleaned``)."""
        a = self.a
        noisy_run, store, truth = self.noisy(noise, seed)
        where = a.work / name_of(noise) / f"seed{seed}" / arm
        where.mkdir(parents=True, exist_ok=True)
        prune_store(store, dataclasses.replace(spec, seed=seed), where / "manifest.json", first_epochs=a.T)
        run = train(self.config(noise, seed, f"{arm}/run", record="off", manifest=str(where / "manifest.json")))
        out = self._result(run, noise, seed, arm)
        record_cost = sum(m["samples_seen"] for m in noisy_run.metrics[: a.T])
        out.update(cost=run.cost + record_cost, retrain_cost=run.cost)
        return out

    def random_retrain_arm(self, noise, seed) -> dict:
        """As many samples as ``cleaned`` keeps, drawn at random, E epochs from scratch (nothing recorded)."""
        _, store, truth = self.noisy(noise, seed)
        n_kept = self.cells.get(f"arm/{name_of(noise)}/seed{seed}/cleaned")["n_kept"]
        kept = np.random.default_rng([seed, 0xC1]).choice(store.n_samples, n_kept, replace=False)
        removed = np.setdiff1d(np.arange(store.n_samples), kept)
        manifest = self.a.work / name_of(noise) / f"seed{seed}" / "cleaned_random-manifest.json"
        custom_manifest(manifest, store, kept=kept, labels=store.labels, removed=removed,
                        reason="removed at random, as many as the cleaned arm removes")
        run = train(self.config(noise, seed, "cleaned_random", record="off", manifest=str(manifest)))
        return {**self._result(run, noise, seed, "cleaned_random"), "n_kept": n_kept,
                "kept_noise": float(truth["flipped"][np.sort(kept)].mean())}

    # ------------------------------------------------------------------------------ detection
    def detect_cell(self, noise, seed) -> dict:
        """dprune's detectors at every T of ``--detect-T`` against cleanlab's every rule."""
        from cleanlab.filter import find_label_issues

        from dprune.scoring import score_store
        from dprune.scoring.params import default_params

        a = self.a
        run, store, truth = self.noisy(noise, seed)
        flipped, clean = truth["flipped"], truth["clean_labels"]
        # What the default detector read (cells before the second default read p-bar and say nothing).
        out = {"n_flipped": int(flipped.sum()), "probs": default_params()["confident"]["probs"], "dprune": {},
               "cleanlab": {}}
        for T in a.detect_T:
            scores, _ = score_store(store, methods=["entropy", "confident", "aum"], first_epochs=T)
            cost = sum(m["samples_seen"] for m in run.metrics[:T])
            row = {"cost": cost, "flags": {}, "scores": {}}
            for name, flags, suggestion in (
                    ("confident", scores["confident"], scores["confident_label"]),
                    ("argmax", scores["mislabel"], scores["soft_argmax"])):
                row["flags"][name] = {**prf(flags, flipped), "suggestion_right":
                                      float((suggestion[flags] == clean[flags]).mean()) if flags.any() else float("nan")}
            for name, s in (("label_margin", -scores["label_margin"]), ("aum", scores["aum"])):
                row["scores"][name] = auc(s, flipped)
            out["dprune"][f"T{T}"] = row
        for cv in a.cv_epochs:
            probs, cost = self.cleanlab_probs(noise, seed, cv)
            rules = {}
            for rule in CLEANLAB_FILTERS:
                t0 = time.perf_counter()
                issues = find_label_issues(store.labels, probs, filter_by=rule, n_jobs=1)
                rules[rule] = {**prf(issues, flipped), "seconds": time.perf_counter() - t0}
            out["cleanlab"][f"{a.folds}x{cv}"] = {"cost": cost, "rules": rules}
        return out

    # ------------------------------------------------------------------------------ plan
    def todo(self) -> list:
        """Seed by seed over every setting: the headline arms, the detection cell, then the other arms
        (those on the first ``--rest-seeds`` seeds only)."""
        a, work = self.a, []
        order = [arm for arm in ARMS if arm in a.arms]
        headline = [arm for arm in order if arm in HEADLINE]
        rest = [arm for arm in order if arm not in HEADLINE]
        for s in a.seeds:
            for noise in a.noise:
                nm = name_of(noise)
                for arm in headline:
                    work.append((f"arm/{nm}/seed{s}/{arm}", lambda noise=noise, s=s, arm=arm: self.arm(noise, s, arm)))
                if "detect" in a.parts:
                    work.append((f"detect/{nm}/seed{s}", lambda noise=noise, s=s: self.detect_cell(noise, s)))
        for s in a.seeds[: a.rest_seeds]:
            for noise in a.noise:
                nm = name_of(noise)
                for arm in rest:
                    work.append((f"arm/{nm}/seed{s}/{arm}", lambda noise=noise, s=s, arm=arm: self.arm(noise, s, arm)))
            if "clean" in a.arms:
                work.append((f"clean/seed{s}", lambda s=s: self.clean_cell(s)))
        if a.only:
            work = [(k, f) for k, f in work if k.startswith(a.only)]
        return work


class _CleanData:
    """The dataset with its clean labels, as :func:`custom_manifest` reads a store."""

    def __init__(self, dataset):
        from dprune.store import fingerprint

        self.labels = np.asarray(dataset.labels, np.int64)
        self.n_samples, self.n_classes = len(self.labels), dataset.num_classes
        self.run_dir = "(dataset)"
        self._fingerprint = fingerprint(self.labels, dataset.sample_ids)

    def identity(self, first_epochs=None) -> dict:
        return {"fingerprint": self._fingerprint, "generation": None, "epochs": 0}


def main(argv=None) -> str:
    a = parse_args(argv)
    torch.set_num_threads(1)
    config = {k: v for k, v in vars(a).items()
              if k not in ("work", "results_dir", "report_only", "data_root", "only", "noise", "seeds", "arms",
                           "rest_seeds", "parts", "checked")}  # the checked arm's cells record theirs
    cells = Cells(a.results_dir, config)
    if not a.report_only:
        cells.note_run({"machine": machine(), "command": " ".join(["python", "benchmarks/noisy_method.py",
                                                                  *(sys.argv[1:] if argv is None else argv)]),
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        run_cells(cells, Experiment(a, cells).todo())
    from noisy_report import write_report

    return write_report(cells)


if __name__ == "__main__":
    print(main())
