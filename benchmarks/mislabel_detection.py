"""Label cleaning: dprune's detectors on one trajectory against cleanlab's K-fold, and what retraining gains.

For each noise setting (``--noise KIND:RATE``; ``symmetric`` = uniform to another class,
``class`` = class c -> c + 1, injected by the trainer and recorded in ``label_noise.npz``) and
seed s:

- **one recorded run** of E epochs on the noisy labels (training seed s), a normal run; the
  detectors read its first T epochs (``--T``), so their cost is T x N sample-epochs;
- **dprune's detectors**: ``confident`` (confident learning over the trajectory's mean
  probabilities, :mod:`dprune.scoring.confident`, its default rule ``filter_by=noise_rate``),
  ``confident, self_confidence`` (``selfconf`` in retraining: the same detector with
  ``--param confident.filter_by=self_confidence``), ``argmax`` (the paper's rule: soft-label
  argmax != label with p_max >= 0.5) and ``argmax, any confidence`` (argmax != label);
  continuous scores for AUROC / AP: ``label_margin`` and ``p_avg_label`` (low = suspect),
  ``aum`` (-AUM: high = suspect), the soft label's ``p_label``;
- **cleanlab** as its users run it: K folds (``--folds``), each trained ``--cv-epochs`` epochs
  on K - 1 folds, predicting the held-out fold; ``find_label_issues`` (``prune_by_noise_rate``)
  on the out-of-sample probabilities; its cost is every fold's training;
- **retraining** (``--retrain-seeds``, 0 and 1; E epochs from scratch, training seed 1000 + s) with the same
  action for every detector: *remove* its flagged samples, and separately *relabel* them
  where it proposes a label (confident, selfconf: relabel when its suggestion holds p-bar >= 0.5, remove
  otherwise; argmax: the soft-label argmax; cleanlab: the argmax of its out-of-sample
  probabilities); beside them the noisy labels, the clean labels, the true flips removed
  (oracle) and a random removal of as many samples as ``confident`` flags.

Every cell is a JSON file under ``benchmarks/results/mislabel/cells/``; ``--report-only``
rebuilds ``report.md`` there from them.  The committed sweep: 68 cells, 4.5 h of one core.

    OMP_NUM_THREADS=1 python benchmarks/mislabel_detection.py &   # two processes share the cells
    OMP_NUM_THREADS=1 python benchmarks/mislabel_detection.py &
    python benchmarks/mislabel_detection.py --report-only
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS_DIR, Cells, auc, machine, noise_setting_parser, prepare_data, prf, run_cells,  # noqa: E402
                     store_and_truth, train_config)

from dprune.data import IndexedDataset  # noqa: E402
from dprune.manifest import write_manifest  # noqa: E402
from dprune.scoring import load_or_score, score_store  # noqa: E402
from dprune.select import Selection  # noqa: E402
from dprune.stages import train  # noqa: E402
from dprune.store import open_store  # noqa: E402
from dprune.train.loop import Trainer  # noqa: E402

RETRAIN_SEED = 1000
RANDOM_REMOVAL_STREAM = 0x72616E64  # "rand": the random-removal baseline's own seed stream
REMOVE = ("oracle", "random", "confident", "selfconf", "argmax", "cleanlab")
RELABEL = ("confident", "selfconf", "argmax", "cleanlab")
SELF_CONFIDENCE = {"confident": {"filter_by": "self_confidence"}}


noise_setting = noise_setting_parser(("symmetric", "class"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("fashion-mnist", "digits"), default="fashion-mnist")
    p.add_argument("--data-root")
    p.add_argument("--n-train", type=int, help="Class-stratified training subset (default: all 60,000).")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--epochs", type=int, default=6, help="E: the recorded run and every retraining.")
    p.add_argument("--T", type=int, nargs="+", default=[1, 2, 3], help="Trajectory lengths the detectors read.")
    p.add_argument("--retrain-T", type=int, default=3, help="T of the detectors used for retraining.")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--cv-epochs", type=int, default=4, help="Epochs of each cleanlab fold.")
    p.add_argument("--noise", type=noise_setting, nargs="+",
                   default=[noise_setting("symmetric:0.2"), noise_setting("class:0.2")])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--retrain-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--max-steps-per-epoch", type=int)
    p.add_argument("--work", type=Path, default=Path("runs/bench/mislabel"))
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR / "mislabel")
    p.add_argument("--report-only", action="store_true")
    return p.parse_args(argv)


def name_of(kind, rate) -> str:
    return f"{kind}{rate:g}"


class Experiment:
    def __init__(self, a, cells: Cells):
        self.a, self.cells = a, cells
        self.root, self.data_desc = (prepare_data("digits", a.work) if a.dataset == "digits" else
                                     prepare_data("fashion-mnist", a.work, n_train=a.n_train, source=a.data_root))

    def config(self, noise, seed: int, name: str, *, train_seed: int, epochs: int | None = None, clean=False, **kw):
        a = self.a
        kind, rate = noise
        noise_kw = {} if clean else dict(label_noise=rate, noise_kind=kind, noise_seed=seed)
        return train_config(a.work / name_of(*noise) / f"seed{seed}" / name, seed=train_seed, data_root=self.root,
                            dataset=a.dataset, model=a.model, epochs=epochs or a.epochs, batch_size=a.batch_size,
                            lr=a.lr, max_steps=a.max_steps_per_epoch, **noise_kw, **kw)

    def seed_dir(self, noise, seed) -> Path:
        return self.a.work / name_of(*noise) / f"seed{seed}"

    def recorded(self, noise, seed):
        run = train(self.config(noise, seed, "record", train_seed=seed, record="train"))
        return (run, *store_and_truth(run))

    # --------------------------------------------------------------------------- detection
    @functools.lru_cache(maxsize=None)  # detection cells and every retraining variant ask for the same T
    def detectors(self, noise, seed, T):
        """dprune's flags, suggestions and continuous scores from the first T epochs."""
        run, store, truth = self.recorded(noise, seed)
        scores, meta, _ = load_or_score(store, methods=["entropy", "aum", "confident"], first_epochs=T,
                                        params={"mislabel": {"min_confidence": 0.5}})
        # The variant reads the same trajectory; scored apart (its flags share the names).
        sc, _ = score_store(store, methods=["confident"], first_epochs=T, params=SELF_CONFIDENCE)
        y = store.labels
        flags = {"confident": scores["confident"], "confident, self_confidence": sc["confident"],
                 "argmax": scores["mislabel"], "argmax, any confidence": (scores["soft_argmax"] >= 0) &
                 (scores["soft_argmax"] != y)}
        suggestion = {"confident": scores["confident_label"], "confident, self_confidence": sc["confident_label"],
                      "argmax": scores["soft_argmax"], "argmax, any confidence": scores["soft_argmax"]}
        relabel = {"confident": scores["confident_relabel"], "confident, self_confidence": sc["confident_relabel"]}
        continuous = {"label_margin": -scores["label_margin"], "p_avg_label": -scores["p_avg_label"],
                      "aum": scores["aum"], "p_label": -scores["p_label"]}
        cost = sum(m["samples_seen"] for m in run.metrics[:T])
        return flags, suggestion, relabel, continuous, cost, truth

    def detect_cell(self, noise, seed, T) -> dict:
        flags, suggestion, relabel, continuous, cost, truth = self.detectors(noise, seed, T)
        flipped, clean = truth["flipped"], truth["clean_labels"]
        out = {"T": T, "cost": cost, "n_flipped": int(flipped.sum()), "flags": {}, "scores": {}}
        for k, f in flags.items():
            out["flags"][k] = {**prf(f, flipped), "suggestion_right": float((suggestion[k][f] == clean[f]).mean())
                               if f.any() else float("nan")}
        for k, r in relabel.items():
            r = flags[k] & r
            out["flags"][k]["relabelled"] = int(r.sum())
            out["flags"][k]["relabelled_right"] = float((suggestion[k][r] == clean[r]).mean()) if r.any() else \
                float("nan")
        for k, s in continuous.items():
            out["scores"][k] = auc(s, flipped)
        return out

    def threshold_cell(self, noise, seed, T) -> dict:
        """AUM against threshold samples (Pleiss et al.): a run of its own, with 1/(C+1) of the
        samples in a fake class.  Recall counts every flip, those among the threshold samples
        (which this run cannot judge) as missed; AUROC/AP are over the judged samples."""
        run = train(self.config(noise, seed, "record_threshold", train_seed=seed, record="train",
                                threshold_samples=True))
        store = open_store(Path(run.config.train.out) / "trajectory")
        with np.load(Path(run.config.train.out) / "label_noise.npz") as z:
            flipped = z["flipped"]
        scores, _, _ = load_or_score(store, methods=["aum"], first_epochs=T)
        judged = ~scores["threshold_sample"]
        f = scores["aum_mislabel"]
        return {"T": T, "cost": sum(m["samples_seen"] for m in run.metrics[:T]), "n_flipped": int(flipped.sum()),
                "n_threshold": int((~judged).sum()), "flags": {"aum, threshold samples": prf(f, flipped)},
                "scores": {"aum, threshold run": auc(scores["aum"][judged], flipped[judged])},
                "final_acc_of_run": run.metrics[-1]["test_metric"]}

    # --------------------------------------------------------------------------- cleanlab
    def cleanlab_probs(self, noise, seed):
        """Out-of-sample probabilities [N, C] from K fold models, and their training cost."""
        from sklearn.model_selection import StratifiedKFold

        run, store, truth = self.recorded(noise, seed)
        cache = self.seed_dir(noise, seed) / "cleanlab_probs.npz"
        if cache.exists():
            with np.load(cache) as z:
                return z["probs"], int(z["cost"])
        a = self.a
        noisy = store.labels
        N, C = store.n_samples, store.n_classes
        probs = np.full((N, C), np.nan)
        cost = 0
        folds = StratifiedKFold(a.folds, shuffle=True, random_state=seed).split(np.zeros(N), noisy)
        for k, (train_idx, held_idx) in enumerate(folds):
            manifest = self.seed_dir(noise, seed) / "manifests" / f"fold{k}.json"
            custom_manifest(manifest, store, kept=train_idx, labels=noisy, removed=held_idx,
                            reason=f"held out: fold {k} of {a.folds}")
            cfg = self.config(noise, seed, f"folds/fold{k}", train_seed=seed, epochs=a.cv_epochs, record="off",
                              manifest=str(manifest))
            done = train(cfg)
            cost += done.cost
            trainer = Trainer(cfg)
            trainer.fit()  # finished: loads the trained model
            probs[held_idx] = predict(trainer, held_idx)
        np.savez(cache, probs=probs, cost=cost)
        return probs, cost

    def cleanlab_cell(self, noise, seed) -> dict:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        _, store, truth = self.recorded(noise, seed)
        probs, cost = self.cleanlab_probs(noise, seed)
        noisy, flipped, clean = store.labels, truth["flipped"], truth["clean_labels"]
        t0 = time.perf_counter()
        issues = find_label_issues(noisy, probs, n_jobs=1)
        found_s = time.perf_counter() - t0
        out = {"cost": cost, "find_s": found_s, "flags": prf(issues, flipped),
               "suggestion_right": float((probs.argmax(1)[issues] == clean[issues]).mean()) if issues.any() else
               float("nan"), "scores": {}}
        for method in ("self_confidence", "normalized_margin"):
            out["scores"][method] = auc(-get_label_quality_scores(noisy, probs, method=method), flipped)
        return out

    # --------------------------------------------------------------------------- retraining
    def retrain_cell(self, noise, seed, variant: str) -> dict:
        a = self.a
        if variant == "clean":
            run = train(self.config(noise, seed, "retrain/clean", train_seed=RETRAIN_SEED + seed, record="off",
                                    clean=True))
            return {"acc": run.metrics[-1]["test_metric"], "n_kept": self.recorded(noise, seed)[1].n_samples,
                    "cost": run.cost}
        _, store, truth = self.recorded(noise, seed)
        noisy, flipped, clean = store.labels, truth["flipped"], truth["clean_labels"]
        N = len(noisy)
        labels = noisy.copy()
        if variant == "noisy":
            remove = np.zeros(N, bool)
        else:
            action, det = variant.split("_", 1)[1], variant.split("_", 1)[0]
            if det in ("oracle", "random"):
                if det == "oracle":
                    remove = flipped.copy()
                else:
                    flags = self.detectors(noise, seed, a.retrain_T)[0]
                    remove = np.zeros(N, bool)
                    # a stream of its own: default_rng(seed) is the noise's, whose first draws are the flips
                    rng = np.random.default_rng((seed, RANDOM_REMOVAL_STREAM))
                    remove[rng.choice(N, int(flags["confident"].sum()), replace=False)] = True
            elif det == "cleanlab":
                from cleanlab.filter import find_label_issues

                probs, _ = self.cleanlab_probs(noise, seed)
                flags = find_label_issues(noisy, probs, n_jobs=1)
                remove = flags.copy()
                if action == "relabel":
                    labels[flags] = probs.argmax(1)[flags]
                    remove[:] = False
            else:
                flagsd, suggestion, agreed, _, _, _ = self.detectors(noise, seed, a.retrain_T)
                name = {"selfconf": "confident, self_confidence"}.get(det, det)
                f = flagsd[name]
                remove = f.copy()
                if action == "relabel":
                    relabel = f & agreed.get(name, True)
                    labels[relabel] = suggestion[name][relabel]
                    remove = f & ~relabel
        manifest = self.seed_dir(noise, seed) / "manifests" / f"{variant}.json"
        custom_manifest(manifest, store, kept=np.flatnonzero(~remove), labels=labels, removed=np.flatnonzero(remove),
                        reason=variant)
        run = train(self.config(noise, seed, f"retrain/{variant}", train_seed=RETRAIN_SEED + seed, record="off",
                                manifest=str(manifest)))
        kept = ~remove
        return {"acc": run.metrics[-1]["test_metric"], "n_kept": int(kept.sum()), "cost": run.cost,
                "labels_right": float((labels[kept] == clean[kept]).mean()),
                "relabelled": int((labels != noisy).sum())}

    def todo(self) -> list:
        a, work = self.a, []
        for noise in a.noise:
            nm = name_of(*noise)
            for s in a.seeds:
                for T in a.T:
                    work.append((f"detect/{nm}/seed{s}/T{T}", lambda noise=noise, s=s, T=T: self.detect_cell(noise, s, T)))
                work.append((f"cleanlab/{nm}/seed{s}", lambda noise=noise, s=s: self.cleanlab_cell(noise, s)))
        for noise in a.noise:  # threshold samples need a recording of their own: the first seed only
            nm = name_of(*noise)
            for T in a.T:
                work.append((f"threshold/{nm}/seed{a.seeds[0]}/T{T}",
                             lambda noise=noise, T=T: self.threshold_cell(noise, a.seeds[0], T)))
        for noise in a.noise:
            nm = name_of(*noise)
            for s in a.retrain_seeds:
                variants = ["noisy"] + (["clean"] if noise == a.noise[0] else []) + \
                    [f"{d}_{act}" for d in REMOVE for act in ("relabel", "remove") if act == "remove" or d in RELABEL]
                for v in variants:
                    key = f"retrain/{'all' if v == 'clean' else nm}/seed{s}/{v}"
                    work.append((key, lambda noise=noise, s=s, v=v: self.retrain_cell(noise, s, v)))
        return work


def custom_manifest(path: Path, store, *, kept: np.ndarray, labels: np.ndarray, removed: np.ndarray, reason: str) -> None:
    """A manifest that keeps ``kept`` with ``labels`` (relabellings included), made without a scorer."""
    N = store.n_samples
    kept, removed = np.sort(np.asarray(kept, np.int64)), np.sort(np.asarray(removed, np.int64))
    empty = np.zeros(0, np.int64)
    labels = np.asarray(labels, np.int64)
    rel = np.flatnonzero((labels != store.labels) & np.isin(np.arange(N), kept))
    sel = Selection(kept=kept, pruned=empty, relabel_index=rel, relabel_label=labels[rel], outlier_index=removed,
                    outlier_reason=[reason] * len(removed), unobserved=empty, unscored=empty, nonfinite_pruned=empty,
                    labels_final=labels, n_observed=N, emptied_classes=[],
                    params={"method": "none", "ratio": 0.0, "policy": "global", "reason": reason})
    write_manifest(path, sel, source_run=str(store.run_dir), made_from=store.identity(), n_classes=store.n_classes)


@torch.no_grad()
def predict(trainer: Trainer, indices: np.ndarray) -> np.ndarray:
    """Softmax probabilities [n, C] (float64) of a trained run's model on training samples ``indices``."""
    data = IndexedDataset(trainer.data.train_set, indices=indices)
    module = trainer.engine.module
    module.eval()
    out = [torch.softmax(module(batch[0].to(trainer.world.device)).double(), 1).cpu()
           for batch in DataLoader(data, batch_size=512, shuffle=False)]
    return torch.cat(out).numpy()


def main(argv=None) -> str:
    a = parse_args(argv)
    torch.set_num_threads(1)
    config = {k: v for k, v in vars(a).items() if k not in ("work", "results_dir", "report_only", "data_root")}
    cells = Cells(a.results_dir, config)
    if not a.report_only:
        cells.note_run({"machine": machine(), "command": " ".join(["python", "benchmarks/mislabel_detection.py",
                                                                  *(sys.argv[1:] if argv is None else argv)]),
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        exp = Experiment(a, cells)
        run_cells(cells, exp.todo())
    from mislabel_report import write_report

    return write_report(cells)


if __name__ == "__main__":
    print(main())
