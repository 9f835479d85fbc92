"""Mislabel detection: dprune's soft-label flags against cleanlab with K-fold cross-validation.

For every noise setting (``--noise KIND:RATE``; KIND ``symmetric`` = uniform to another class,
``class`` = class c -> c + 1) and seed, the training labels are corrupted by the trainer
(``TrainConfig.label_noise / noise_kind / noise_seed``; the truth is in ``label_noise.npz``), then:

- **dprune**: one T-epoch recorded run (``--record-epochs``) on the noisy labels, scored once.
  Two flag rules against the truth (the flipped labels): ``argmax`` = soft-label argmax !=
  given label (the paper's plain rule); ``relabel rule`` = what ``select(relabel=True)``
  relabels: argmax != label with soft-label probability >= ``--relabel-confidence``, not
  among the ``--outlier-fraction`` flattest soft labels (removed as outliers).
- **cleanlab**: the way its users run it: the same model trained K times (``--folds``) for the
  full budget E on K - 1 stratified folds, predicting the held-out fold; the out-of-sample
  probabilities go to ``cleanlab.filter.find_label_issues`` (default ``prune_by_noise_rate``).
- **cleanlab on dprune's soft labels**: ``find_label_issues`` given the T-epoch soft labels
  (softmax of the mean logits, in-sample) instead: cleanlab's rule at dprune's cost.

Reported: precision, recall, F1 of each flag set; how many flagged labels the method's own
correction gets right (dprune: the soft-label argmax it relabels to; cleanlab: the argmax of
its out-of-sample probabilities, had one relabelled); the label accuracy of the training set
each retraining uses; the training cost in sample-epochs (samples processed by the
optimiser); and the test accuracy after retraining for E epochs from scratch on (a) the noisy
labels, (b) dprune's correction + outlier removal (``select`` with ratio 0, ``relabel=True``,
``outlier_fraction``), (c) the noisy labels minus cleanlab's flagged samples, and, as the
ceiling, the clean labels.

Every finished stage is written at once to ``RESULTS/mislabel_<dataset>.json``; a rerun skips
it, and killed training runs resume from their checkpoints in ``--work``.

Commands (results in ``benchmarks/results/``; the ones that produced the committed results)::

    python benchmarks/mislabel_detection.py --dataset digits --epochs 10 --record-epochs 3 --seeds 0 1
    python benchmarks/mislabel_detection.py --dataset fashion-mnist --n-train 5000 --epochs 10 --record-epochs 3 \\
        --batch-size 128 --seeds 0
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (METRICS, ResultsFile, add_common_args, base_config, custom_manifest,  # noqa: E402
                     describe_setup, final_metrics, finish_common_args, finished, fmt_pm, format_metrics, mean_std,
                     prf, sample_epochs, start, task_of, train, train_config)

from dprune.data import IndexedDataset  # noqa: E402
from dprune.scoring import score_store  # noqa: E402
from dprune.select import select, write_manifest  # noqa: E402
from dprune.store import TrajectoryStore  # noqa: E402
from dprune.train.config import TrainConfig  # noqa: E402
from dprune.train.loop import Trainer  # noqa: E402

DEFAULT_NOISE = ("symmetric:0.1", "symmetric:0.2", "class:0.1", "class:0.2")
DETECTORS = ("dprune_argmax", "dprune_relabel", "cleanlab_cv", "cleanlab_on_dprune")
DETECTOR_NAMES = {"dprune_argmax": "dprune, argmax != label",
                  "dprune_relabel": "dprune, relabel rule",
                  "cleanlab_cv": "cleanlab, K-fold CV",
                  "cleanlab_on_dprune": "cleanlab on dprune soft labels"}
RETRAINS = ("noisy", "dprune", "cleanlab")


def noise_setting(text: str) -> tuple[str, float]:
    """Parse ``KIND:RATE`` (``symmetric:0.2``)."""
    kind, _, rate = text.partition(":")
    try:
        value = float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KIND:RATE such as symmetric:0.2, got {text!r}") from None
    if kind not in ("symmetric", "class") or not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"KIND must be symmetric or class and RATE in (0, 1), got {text!r}")
    return kind, value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, epochs_help="E: epochs of every cleanlab fold and every retraining.", default_seeds=[0])
    p.add_argument("--noise", type=noise_setting, nargs="+", default=[noise_setting(s) for s in DEFAULT_NOISE],
                   metavar="KIND:RATE", help=f"Noise settings (default {' '.join(DEFAULT_NOISE)}).")
    p.add_argument("--folds", type=int, default=5, help="K of cleanlab's cross-validation (its default: 5).")
    p.add_argument("--relabel-confidence", type=float, default=0.5, help="select's relabel_min_confidence.")
    p.add_argument("--outlier-fraction", type=float, default=0.01, help="select's outlier_fraction.")
    args = p.parse_args(argv)
    if args.folds < 2:
        p.error(f"--folds must be >= 2, got {args.folds}")
    if not 1 <= args.record_epochs <= args.epochs:
        p.error(f"--record-epochs must be in [1, --epochs], got {args.record_epochs}")
    return finish_common_args(args, "mislabel")


def setting_name(kind: str, rate: float) -> str:
    return f"{kind}{rate:g}"


class Setting:
    """The runs of one (seed, noise setting)."""

    def __init__(self, args, seed: int, kind: str, rate: float, data_root: str | None, results: ResultsFile):
        self.args, self.seed, self.kind, self.rate, self.data_root = args, seed, kind, rate, data_root
        self.results = results
        self.key = f"seed{seed}/{setting_name(kind, rate)}"
        self.dir = args.work / f"seed{seed}" / setting_name(kind, rate)

    def config(self, name: str, epochs: int, **kw) -> TrainConfig:
        return train_config(self.args, self.dir / name, seed=self.seed, data_root=self.data_root, epochs=epochs,
                            label_noise=self.rate, noise_kind=self.kind, noise_seed=self.seed, **kw)

    def run(self) -> None:
        cells = self.results.cells
        if all(f"{self.key}/{k}" in cells for k in ("detection", *(f"retrain_{r}" for r in RETRAINS))):
            return
        manifests = self.detect()
        for name in RETRAINS:
            key = f"{self.key}/retrain_{name}"
            if key in cells:
                continue
            t0 = time.perf_counter()
            metrics = train(self.config(f"retrain_{name}", self.args.epochs, record="off", manifest=manifests[name]))
            result = final_metrics(metrics, self.args.task)
            self.results.put(key, {**result, "cost": sample_epochs(metrics), "wall_s": time.perf_counter() - t0})
            print(f"  {self.key} retrain on {name}: {format_metrics(result, self.args.task)}", flush=True)

    def detect(self) -> dict:
        """Record, score, cross-validate; write both manifests; return {retrain: manifest or None}."""
        a = self.args
        t0 = time.perf_counter()
        rec_metrics = train(self.config("record", a.record_epochs, record="train"))
        rec_wall = time.perf_counter() - t0
        store = TrajectoryStore.open(self.dir / "record" / "trajectory")
        noise = np.load(self.dir / "record" / "label_noise.npz")
        clean, noisy, flipped = noise["clean_labels"], noise["noisy_labels"], noise["flipped"]
        if not np.array_equal(noisy, store.labels):
            raise RuntimeError(f"{store.run_dir}: the store's labels are not the injected noisy labels")
        N, C = store.n_samples, store.n_classes
        scores, _ = score_store(store, methods=["entropy"])
        soft = soft_labels(store)

        sel = select(scores, noisy, C, method="entropy", ratio=0.0, policy="class", relabel=True,
                     relabel_min_confidence=a.relabel_confidence, outlier_fraction=a.outlier_fraction, seed=self.seed)
        dprune_manifest = self.dir / "manifests" / "dprune.json"
        write_manifest(dprune_manifest, sel, source_run=str(store.run_dir), fingerprint=store.fingerprint,
                       n_classes=C, scorer_params={})

        probs, cv_cost, cv_wall = self.cross_validate(store, noisy)
        from cleanlab.filter import find_label_issues

        issues = find_label_issues(noisy, probs, n_jobs=1)
        issues_soft = find_label_issues(noisy, soft, n_jobs=1)
        cleanlab_manifest = self.dir / "manifests" / "cleanlab.json"
        custom_manifest(cleanlab_manifest, kept=np.flatnonzero(~issues), labels_N=noisy,
                        removed=np.flatnonzero(issues), reason="cleanlab find_label_issues (K-fold CV)", store=store)

        soft_argmax = scores["soft_argmax"]
        relabelled = np.zeros(N, bool)
        relabelled[sel.relabel_index] = True
        flags = {"dprune_argmax": soft_argmax != noisy, "dprune_relabel": relabelled,
                 "cleanlab_cv": issues, "cleanlab_on_dprune": issues_soft}
        fix = {"dprune_argmax": soft_argmax, "dprune_relabel": sel.labels_final,
               "cleanlab_cv": probs.argmax(1), "cleanlab_on_dprune": soft.argmax(1)}
        rec_cost = sample_epochs(rec_metrics)
        cost = {"dprune_argmax": rec_cost, "dprune_relabel": rec_cost, "cleanlab_cv": cv_cost,
                "cleanlab_on_dprune": rec_cost}
        detection = {}
        for d in DETECTORS:
            f = flags[d]
            detection[d] = {**prf(f, flipped), "corrected_right": float((fix[d][f] == clean[f]).mean()) if f.any()
                            else float("nan"), "cost": cost[d]}
        kept_d = sel.kept
        outliers = sel.outlier_index
        self.results.put(f"{self.key}/detection", {
            "n_train": N, "n_flipped": int(flipped.sum()), "detectors": detection,
            "label_acc": {"noisy": float((noisy == clean).mean()),
                          "dprune": float((sel.labels_final[kept_d] == clean[kept_d]).mean()),
                          "cleanlab": float((noisy[~issues] == clean[~issues]).mean())},
            "n_kept": {"noisy": N, "dprune": len(kept_d), "cleanlab": int((~issues).sum())},
            "dprune_outliers": {"removed": len(outliers), "flipped": int(flipped[outliers].sum())},
            "cost": {"record": rec_cost, "cross_validation": cv_cost},
            "wall_s": {"record": rec_wall, "cross_validation": cv_wall}})
        print(f"  {self.key}: F1 dprune relabel {detection['dprune_relabel']['f1']:.3f}, "
              f"cleanlab CV {detection['cleanlab_cv']['f1']:.3f}", flush=True)
        return {"noisy": None, "dprune": str(dprune_manifest), "cleanlab": str(cleanlab_manifest)}

    def cross_validate(self, store, noisy: np.ndarray) -> tuple[np.ndarray, int, float]:
        """Out-of-sample probabilities [N, C] from K models, their total cost and wall time."""
        from sklearn.model_selection import StratifiedKFold

        a = self.args
        N, C = store.n_samples, store.n_classes
        probs = np.full((N, C), np.nan)
        cost, wall = 0, 0.0
        folds = StratifiedKFold(a.folds, shuffle=True, random_state=self.seed).split(np.zeros(N), noisy)
        for k, (train_idx, held_idx) in enumerate(folds):
            manifest = self.dir / "manifests" / f"fold{k}.json"
            custom_manifest(manifest, kept=train_idx, labels_N=noisy, removed=held_idx,
                            reason=f"held-out fold {k} of {a.folds}", store=store)
            cfg = self.config(f"folds/fold{k}", a.epochs, record="off", manifest=str(manifest))
            cache = Path(cfg.out) / "heldout_probs.npz"
            t0 = time.perf_counter()
            if cache.exists():
                fold_probs = np.load(cache)["probs"]
            else:
                trainer = Trainer(cfg)
                trainer.fit()
                fold_probs = predict(trainer, held_idx)
                np.savez(cache, probs=fold_probs, index=held_idx)
            wall += time.perf_counter() - t0
            probs[held_idx] = fold_probs
            cost += sample_epochs(finished(cfg))
        return probs, cost, wall


@torch.no_grad()
def predict(trainer: Trainer, indices: np.ndarray) -> np.ndarray:
    """Softmax probabilities [n, C] (float64) of a trained run's model on training samples ``indices``.

    ReID: the identity classifier's logits on the images as evaluation sees them (resized, no
    augmentation); classification: the model's outputs on the (unaugmented) training set.
    """
    if trainer.cfg.task == "reid":
        from dprune.data.reid import ReIDImageDataset

        data = Subset(ReIDImageDataset(trainer.reid.train, trainer.reid.root, trainer.eval_transform),
                      indices.tolist())
        forward = trainer.module.logits
    else:
        data, forward = IndexedDataset(trainer.train_set, indices=indices), trainer.module
    trainer.module.eval()
    out = [torch.softmax(forward(batch[0].to(trainer.world.device)).double(), 1).cpu()
           for batch in DataLoader(data, batch_size=512, shuffle=False)]
    return torch.cat(out).numpy()


def soft_labels(store: TrajectoryStore) -> np.ndarray:
    """dprune's soft labels [N, C]: softmax of the mean logits over each sample's observed epochs."""
    logits, counts = store.read(0, store.n_samples)
    seen = counts > 0
    z = np.where(seen[..., None], logits.astype(np.float64), 0.0).sum(0) / np.maximum(seen.sum(0), 1)[:, None]
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


# ---------------------------------------------------------------------------------- report
def write_report(results: ResultsFile, path: Path) -> str:
    """Write the markdown tables to ``path``; return them."""
    cfg, cells = results.data["config"], results.cells
    d = cfg["dataset"]
    settings = list(dict.fromkeys(k.split("/")[1] for k in cells if k.endswith("/detection")))
    seeds = sorted({int(k.split("/")[0][4:]) for k in cells if k.endswith("/detection")})

    def per_seed(setting, getter, suffix="detection"):
        return [getter(cells[f"seed{s}/{setting}/{suffix}"]) for s in seeds if f"seed{s}/{setting}/{suffix}" in cells]

    det = ["| noise | detector | flagged | precision | recall | F1 | flagged labels its correction gets right | "
           "cost (sample-epochs) | cost / dprune's |", "|---|---|---|---|---|---|---|---|---|"]
    for st in settings:
        n_flip = mean_std(per_seed(st, lambda c: c["n_flipped"]))[0]
        for dn in DETECTORS:
            def g(field, dn=dn):
                return fmt_pm(*mean_std(per_seed(st, lambda c: c["detectors"][dn][field])))
            flagged = mean_std(per_seed(st, lambda c: c["detectors"][dn]["flagged"]))[0]
            cost = mean_std(per_seed(st, lambda c: c["detectors"][dn]["cost"]))[0]
            ref = mean_std(per_seed(st, lambda c: c["detectors"]["dprune_argmax"]["cost"]))[0]
            det.append(f"| {st} ({n_flip:.0f} wrong) | {DETECTOR_NAMES[dn]} | {flagged:.0f} | {g('precision')} | "
                       f"{g('recall')} | {g('f1')} | {g('corrected_right')} | {cost:,.0f} | {cost / ref:.1f}x |")
    metrics = METRICS[task_of(cfg)]
    ret = ["| noise | training labels | samples | labels right (%) | "
           + " | ".join(f"test {name} (%)" for name, _ in metrics.values()) + " |",
           "|---|---|---|---|" + "---|" * len(metrics)]
    clean = {k: fmt_pm(*mean_std([cells[f"seed{s}/clean"][k] for s in seeds if f"seed{s}/clean" in cells]))
             for k in metrics}
    label_of = {"noisy": "(a) noisy, all samples", "dprune": "(b) dprune: relabel + outlier removal",
                "cleanlab": "(c) cleanlab: flagged samples removed"}
    for st in settings:
        for r in RETRAINS:
            n_kept = mean_std(per_seed(st, lambda c: c["n_kept"][r]))[0]
            lab = fmt_pm(*mean_std(per_seed(st, lambda c: c["label_acc"][r])))
            values = [fmt_pm(*mean_std(per_seed(st, lambda c, k=k: c[k], f"retrain_{r}"))) for k in metrics]
            ret.append(f"| {st} | {label_of[r]} | {n_kept:,.0f} | {lab} | {' | '.join(values)} |")
    outl = [f"- {st}: dprune removed {mean_std(per_seed(st, lambda c: c['dprune_outliers']['removed']))[0]:.0f} "
            f"outliers, {mean_std(per_seed(st, lambda c: c['dprune_outliers']['flipped']))[0]:.1f} of them mislabelled"
            for st in settings]
    walls = sum(v["wall_s"] if isinstance(v["wall_s"], float) else sum(v["wall_s"].values())
                for v in cells.values() if "wall_s" in v)
    m = results.data.get("machine", {})
    lines = [
        f"# Mislabel detection: {d['dataset']}",
        "",
        f"{describe_setup(cfg)} dprune: one T = "
        f"{cfg['record_epochs']}-epoch recorded run. cleanlab: K = {cfg['folds']} folds, each trained E = "
        f"{cfg['epochs']} epochs. Retraining: E = {cfg['epochs']} epochs from scratch. Relabel rule: soft-label "
        f"argmax != label with probability >= {cfg['relabel_confidence']}; outliers: the "
        f"{cfg['outlier_fraction']:g} flattest soft labels. Seeds: {', '.join(map(str, seeds))} "
        f"(mean ± std where more than one). `symmetric`: a label goes to another class uniformly; `class`: "
        f"class c -> c + 1.",
        "",
        "## Detection of the flipped labels",
        "",
        "Precision / recall / F1 / correction in %. Correction: for dprune the soft-label argmax it relabels to; "
        "for cleanlab the argmax of its out-of-sample probabilities (cleanlab itself only flags).",
        "",
        *det,
        "",
        "## Retraining",
        "",
        "Clean labels, all samples (the ceiling): "
        + ", ".join(f"test {name} {clean[k]} %" for k, (name, _) in metrics.items()) + ".",
        "",
        *ret,
        "",
        *outl,
        "",
        f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, torch {m.get('torch', '?')} with "
        f"{m.get('torch_threads', '?')} thread(s), one run at a time. Training wall time: {walls / 60:.1f} min.",
        "",
        "Commands:",
        "",
        "```bash",
        *results.data.get("commands", []),
        "```",
    ]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def main(argv=None) -> str:
    args = parse_args(argv)
    data_root, results, stem = start(
        args, argv, "mislabel_detection.py", "mislabel",
        lambda data: {**base_config(args, data), "folds": args.folds, "relabel_confidence": args.relabel_confidence,
                      "outlier_fraction": args.outlier_fraction})
    if not args.report_only:
        t0 = time.perf_counter()
        for seed in args.seeds:
            key = f"seed{seed}/clean"
            if key not in results.cells:
                t1 = time.perf_counter()
                metrics = train(train_config(args, args.work / f"seed{seed}" / "clean", seed=seed,
                                             data_root=data_root, epochs=args.epochs, record="off"))
                result = final_metrics(metrics, args.task)
                results.put(key, {**result, "cost": sample_epochs(metrics), "wall_s": time.perf_counter() - t1})
                print(f"seed {seed}, clean labels: {format_metrics(result, args.task)}", flush=True)
            for kind, rate in args.noise:
                print(f"seed {seed}, {kind} noise {rate:g}", flush=True)
                Setting(args, seed, kind, rate, data_root, results).run()
        print(f"done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    text = write_report(results, stem.with_suffix(".md"))
    print(text)
    return text


if __name__ == "__main__":
    main()
