"""Helpers shared by ``pruning_quality.py`` and ``mislabel_detection.py``.

- the data: scikit-learn's ``digits`` as is, a stratified Fashion-MNIST subset written as
  idx files into the work folder, so every training run reads it through the library's own
  ``build_dataset("fashion-mnist", root=SUBSET_FOLDER)``, or ``reid-synth``: a generated
  Market-1501 folder (:func:`dprune.data.reid_synth.make_synthetic_reid`) trained with the
  library's ReID recipe; :func:`task_config` gives the ``TrainConfig`` fields of each, and
  :func:`final_metrics` the numbers a benchmark reports (top-1, or mAP and Rank-1);
- arguments and start-up: :func:`add_common_args` / :func:`finish_common_args`, :func:`base_config`
  (what both benchmarks' results depend on) and :func:`start` (threads, data, results file, the
  command line recorded);
- training: :func:`train_config` (a benchmark run's ``TrainConfig``, with ``eval_every=0``: a
  benchmark reads only the final metrics, and on a CPU evaluating every epoch costs up to a third
  of the training) and :func:`train`, the library's :class:`~dprune.train.loop.Trainer` skipping a
  run whose ``metrics.json`` is already complete;
- results files: :class:`ResultsFile`, a JSON of finished cells written atomically after each
  cell, bound to the configuration that produced it, so a killed sweep resumes;
- :func:`custom_manifest` (a manifest that keeps a given subset, e.g. cross-validation folds),
  :func:`prf` (precision / recall / F1), :func:`machine`, :func:`mean_std`, :func:`fmt_pm`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dprune.data import FASHION_MNIST_ROOT, read_idx
from dprune.fileio import atomic_write_json
from dprune.select import Selection, write_manifest
from dprune.train.config import TrainConfig
from dprune.train.loop import Trainer

DATASETS = ("digits", "fashion-mnist", "reid-synth")
# The generated ReID set: 100 training identities x 12 images, 100 test identities (1 query +
# 11 gallery images each), 6 cameras, junk and distractors, clean labels; images 64 x 32.
REID_SYNTH = {"n_ids": 200, "images_per_id": 12, "n_cams": 6, "hardness": 0.6, "junk": 20, "distractors": 50,
              "noise_rate": 0.0, "size": (64, 32)}
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------------ data
def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an (uncompressed) idx file: magic 0x08 type code, then dims."""
    magic = (0x08 << 8) | array.ndim
    with open(path, "wb") as f:
        f.write(magic.to_bytes(4, "big"))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _stratified(labels_N: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a class-stratified random subset of size ``n`` (all when None)."""
    if n is None or n >= len(labels_N):
        return np.arange(len(labels_N))
    if n < 1:
        raise ValueError(f"a subset needs at least one sample, got {n}")
    from sklearn.model_selection import train_test_split

    idx, _ = train_test_split(np.arange(len(labels_N)), train_size=n, stratify=labels_N, random_state=seed)
    return np.sort(idx)


def prepare_data(dataset: str, work: Path, *, n_train: int | None, n_test: int | None, subset_seed: int,
                 source: str | None = None) -> tuple[str | None, dict]:
    """Make the dataset the benchmark trains on; return ``(data_root, description)``.

    Parameters
    ----------
    dataset : {"digits", "fashion-mnist", "reid-synth"}
    work : Path
        Work folder; a Fashion-MNIST subset or the generated ReID set is written to ``work/data/``.
    n_train, n_test : int or None
        Fashion-MNIST: sizes of the class-stratified subsets of the training and test sets
        (None = the whole split).  ``digits`` takes neither (its 1,437 / 360 split is fixed).
    subset_seed : int
        Seed of the subset draw.
    source : str, optional
        Folder of the Fashion-MNIST idx files (default: Debian's ``dataset-fashion-mnist``).

    Returns
    -------
    data_root : str or None
        ``TrainConfig.data_root`` for every run (None for digits).
    description : dict
        What was used, for the results files: sizes, source, subset file.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if dataset != "fashion-mnist" and (n_train is not None or n_test is not None):
        raise ValueError(f"{dataset} has a fixed split; --n-train / --n-test are for fashion-mnist")
    if dataset == "reid-synth":
        return _prepare_reid_synth(work, seed=subset_seed)
    if dataset == "digits":
        from dprune.data import build_dataset

        train, test = build_dataset("digits")
        return None, {"dataset": "digits", "n_train": len(train), "n_test": len(test),
                      "source": "sklearn.datasets.load_digits, stratified 80/20 split (seed 0)"}
    src = Path(source) if source else FASHION_MNIST_ROOT
    if not src.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST not found at {src}: install it with "
                                f"`apt-get install dataset-fashion-mnist` or pass --data-root")
    name = f"fashion-mnist-train{n_train or 'all'}-test{n_test or 'all'}-seed{subset_seed}"
    root = work / "data" / name
    desc_path = root / "subset.json"
    if not desc_path.exists():
        images, labels = {}, {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            stem = src / f"{prefix}-images-idx3-ubyte"
            images[split] = read_idx(stem if stem.exists() else stem.with_suffix(".gz"), expect_magic=0x803)
            stem = src / f"{prefix}-labels-idx1-ubyte"
            labels[split] = read_idx(stem if stem.exists() else stem.with_suffix(".gz"), expect_magic=0x801)
        keep = {"train": _stratified(labels["train"], n_train, subset_seed),
                "test": _stratified(labels["test"], n_test, subset_seed)}
        tmp = root.with_name(f".{name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for split, prefix in (("train", "train"), ("test", "t10k")):
            _write_idx(tmp / f"{prefix}-images-idx3-ubyte", images[split][keep[split]])
            _write_idx(tmp / f"{prefix}-labels-idx1-ubyte", labels[split][keep[split]])
        atomic_write_json(tmp / "subset.json", {
            "source": str(src), "subset_seed": subset_seed,
            "train_indices": keep["train"].tolist(), "test_indices": keep["test"].tolist()})
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    sub = json.loads(desc_path.read_text())
    return str(root), {"dataset": "fashion-mnist", "n_train": len(sub["train_indices"]),
                       "n_test": len(sub["test_indices"]),
                       "source": f"{sub['source']}: class-stratified subset (seed {subset_seed}) of the "
                                 f"60,000 training and 10,000 test images, indices in {desc_path}"}


def _prepare_reid_synth(work: Path, *, seed: int) -> tuple[str, dict]:
    """Generate (once) the ``REID_SYNTH`` Market-1501 folder under ``work/data``."""
    from dprune.data.reid_synth import TRUTH_FILE, make_synthetic_reid

    root = work / "data" / f"reid-synth-seed{seed}"
    if not (root / TRUTH_FILE).exists():  # the truth file is written last
        shutil.rmtree(root, ignore_errors=True)
        make_synthetic_reid(root, "market1501", seed=seed, **REID_SYNTH)
    truth = json.loads((root / TRUTH_FILE).read_text())
    c = truth["counts"]
    h, w = REID_SYNTH["size"]
    return str(root), {
        "dataset": "reid-synth", "n_train": c["train"], "n_test": c["query"] + c["gallery"],
        "split": f"{c['train']:,} training images of {len(truth['train_ids'])} identities; {c['query']:,} query / "
                 f"{c['gallery']:,} gallery images of {len(truth['test_ids'])} other identities (+ {c['junk']} junk, "
                 f"{c['distractors']} distractors)",
        "source": f"dprune.data.reid_synth.make_synthetic_reid, Market-1501 layout, {REID_SYNTH['n_cams']} cameras, "
                  f"hardness {REID_SYNTH['hardness']}, {h}x{w} images, clean labels, seed {seed}"}


def task_config(dataset: str) -> dict:
    """``TrainConfig`` fields that depend on the benchmark dataset (task, real dataset name, input size)."""
    if dataset == "reid-synth":
        h, w = REID_SYNTH["size"]
        return {"task": "reid", "dataset": "market1501", "reid_height": h, "reid_width": w}
    return {"dataset": dataset}


# What a benchmark reports, per task: key in the results cells -> (name, key in metrics.json).
METRICS = {"classification": {"acc": ("top-1", "test_metric")},
           "reid": {"mAP": ("mAP", "mAP"), "rank1": ("Rank-1", "rank1")}}


def final_metrics(metrics: list[dict], task: str) -> dict:
    """The reported numbers of a finished run, e.g. ``{"acc": 0.84}`` or ``{"mAP": ..., "rank1": ...}``."""
    return {key: float(metrics[-1][source]) for key, (_, source) in METRICS[task].items()}


def format_metrics(result: dict, task: str) -> str:
    """``top-1 0.8440`` or ``mAP 0.3712, Rank-1 0.7100``."""
    return ", ".join(f"{METRICS[task][k][0]} {v:.4f}" for k, v in result.items() if k in METRICS[task])


def describe_setup(cfg: dict) -> str:
    """The data and training recipe of a results file's configuration, as report prose."""
    d = cfg["dataset"]
    if d["dataset"] == "reid-synth":
        return (f"Data: {d['split']} ({d['source']}). Model: BoT ReID recipe with a `{cfg['model']}` backbone (last "
                "stride 1, BNNeck, cross-entropy with label smoothing 0.1 + batch-hard triplet loss, Adam with "
                f"warm-up and step decay, P x K batches of {cfg['batch_size']} with K = 4, flip / pad-crop / "
                "random-erasing augmentation); evaluation: the standard protocol (same-camera matches and junk "
                "ignored).")
    return (f"Data: {d['n_train']:,} training / {d['n_test']:,} test images ({d['source']}). Model `{cfg['model']}`, "
            f"SGD (Nesterov, momentum 0.9, weight decay 5e-4), cosine schedule, lr {cfg['lr']}, batch "
            f"{cfg['batch_size']}, no augmentation.")


def task_of(cfg: dict) -> str:
    """The task of a results file's configuration."""
    return "reid" if cfg["dataset"]["dataset"] == "reid-synth" else "classification"


# ------------------------------------------------------------------------------- arguments
def add_common_args(p: argparse.ArgumentParser, *, epochs_help: str, default_seeds: list[int]) -> None:
    """The options both evidence benchmarks take: data, model, training budget, seeds, folders."""
    p.add_argument("--dataset", choices=DATASETS, default="digits",
                   help="reid-synth: a generated Market-1501 folder, trained with the ReID recipe (mAP, Rank-1).")
    p.add_argument("--data-root", help="Folder of the Fashion-MNIST idx files (default: Debian's package).")
    p.add_argument("--n-train", type=int, help="Fashion-MNIST: stratified training subset size (default all 60,000).")
    p.add_argument("--n-test", type=int, help="Fashion-MNIST: stratified test subset size (default all 10,000).")
    p.add_argument("--subset-seed", type=int, default=0, help="Seed of the subset draw (reid-synth: of the generator).")
    p.add_argument("--model", help="Default small_cnn (classification) or resnet18 (reid-synth).")
    p.add_argument("--epochs", type=int, default=15, help=epochs_help)
    p.add_argument("--record-epochs", type=int, default=3, help="T: epochs of the recorded trajectory.")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, help="Default 0.05 (classification, SGD) or the ReID recipe's 3.5e-4 (Adam).")
    p.add_argument("--seeds", type=int, nargs="+", default=default_seeds)
    p.add_argument("--work", type=Path, help="Folder of the training runs (default runs/bench/<benchmark>_<dataset>).")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--max-steps-per-epoch", type=int, help="Cut every epoch short (smoke tests only).")
    p.add_argument("--report-only", action="store_true", help="Only rebuild the report from the JSON.")


def finish_common_args(args: argparse.Namespace, benchmark: str) -> argparse.Namespace:
    """Fill the defaults that depend on the dataset: work folder, task, model, learning rate."""
    args.work = args.work or Path("runs/bench") / f"{benchmark}_{args.dataset}"
    args.task = task_config(args.dataset).get("task", "classification")
    args.model = args.model or ("resnet18" if args.task == "reid" else "small_cnn")
    if args.lr is None and args.task == "classification":
        args.lr = 0.05
    return args


def base_config(args: argparse.Namespace, data: dict) -> dict:
    """The configuration fields both benchmarks' results depend on (each adds its own)."""
    return {"dataset": data, "subset_seed": args.subset_seed if args.dataset != "digits" else None,
            "model": args.model, "epochs": args.epochs, "record_epochs": args.record_epochs,
            "batch_size": args.batch_size, "lr": args.lr, "max_steps_per_epoch": args.max_steps_per_epoch}


def start(args: argparse.Namespace, argv: list[str] | None, script: str, stem_prefix: str,
          config_of) -> tuple[str | None, ResultsFile, Path]:
    """What every benchmark run does first; return ``(data_root, results, report stem)``.

    One torch thread (small CNNs run faster single-threaded on 2 shared cores), the data made
    or found, the results file bound to ``config_of(data description)``, and, unless only
    rebuilding the report, the work folder bound to it too and the command line recorded.
    """
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    data_root, data = prepare_data(args.dataset, args.work, n_train=args.n_train, n_test=args.n_test,
                                   subset_seed=args.subset_seed, source=args.data_root)
    config = config_of(data)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = args.results_dir / f"{stem_prefix}_{args.dataset}"
    results = ResultsFile(stem.with_suffix(".json"), config)
    if not args.report_only:
        check_work_config(args.work, config)
        command = shlex.join(["python", f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])
        commands = results.data.get("commands", [])
        results.set_info(machine=machine(), commands=commands + [command] * (command not in commands))
    return data_root, results, stem


# -------------------------------------------------------------------------------- training
def train_config(args: argparse.Namespace, out: Path, *, seed: int, data_root: str | None, **kw) -> TrainConfig:
    """A benchmark training run: the arguments' model and budget, on the CPU, evaluated only at the end."""
    return TrainConfig(out=str(out), data_root=data_root, model=args.model, batch_size=args.batch_size, lr=args.lr,
                       seed=seed, device="cpu", progress=False, max_steps_per_epoch=args.max_steps_per_epoch,
                       eval_every=0, **task_config(args.dataset), **kw)


def finished(cfg: TrainConfig) -> list[dict] | None:
    """The metrics of a run whose every epoch is done, else None."""
    path = Path(cfg.out) / "metrics.json"
    if path.exists():
        metrics = json.loads(path.read_text())
        if len(metrics) == cfg.epochs:
            return metrics
    return None


def train(cfg: TrainConfig) -> list[dict]:
    """Train (resuming a killed run, skipping a finished one); return per-epoch metrics."""
    return finished(cfg) or Trainer(cfg).fit()


def sample_epochs(metrics: list[dict]) -> int:
    """Training cost of a run: samples processed by the optimiser, summed over epochs."""
    return int(sum(m["samples_seen"] for m in metrics))


def custom_manifest(path: Path, *, kept: np.ndarray, labels_N: np.ndarray, removed: np.ndarray, reason: str,
                    store) -> None:
    """Write a manifest keeping ``kept`` with labels ``labels_N`` (no scorer involved).

    ``removed`` samples are listed as removed outliers with ``reason``; the manifest is bound
    to ``store``'s dataset fingerprint like one made by :func:`dprune.select.select`.
    """
    N = len(labels_N)
    kept, removed = np.sort(np.asarray(kept, np.int64)), np.sort(np.asarray(removed, np.int64))
    if len(np.union1d(kept, removed)) != N or np.intersect1d(kept, removed).size:
        raise ValueError("kept and removed must partition the samples")
    empty = np.zeros(0, np.int64)
    sel = Selection(kept=kept, pruned=empty, relabel_index=empty, relabel_label=empty, outlier_index=removed,
                    outlier_reason=[reason] * len(removed), unobserved=empty, unscored=empty,
                    nonfinite_pruned=empty, labels_final=np.asarray(labels_N, np.int64), n_observed=N,
                    emptied_classes=[], params={"method": "none", "ratio": 0.0, "policy": "global",
                                                "reason": reason})
    write_manifest(path, sel, source_run=str(store.run_dir), fingerprint=store.fingerprint,
                   n_classes=store.n_classes, scorer_params={})


# --------------------------------------------------------------------------------- results
class ResultsFile:
    """A JSON file of finished cells, rewritten atomically after every cell.

    Parameters
    ----------
    path : Path
    config : dict
        What the cells depend on (dataset, epochs, model, ...).  A file made with another
        configuration is refused, so a rerun never mixes results of two set-ups.
    """

    def __init__(self, path: Path, config: dict):
        self.path = Path(path)
        self.data = {"config": config, "cells": {}}
        if self.path.exists():
            old = json.loads(self.path.read_text())
            if old.get("config") != config:
                raise ValueError(f"{self.path} holds results of another configuration:\n  theirs {old.get('config')}\n"
                                 f"  yours  {config}\nuse another --results-dir or delete the file")
            self.data = old

    @property
    def cells(self) -> dict:
        return self.data["cells"]

    def put(self, key: str, value: dict) -> None:
        self.cells[key] = value
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_json(self.path, self.data)

    def set_info(self, **info) -> None:
        self.data.update(info)
        atomic_write_json(self.path, self.data)


def check_work_config(work: Path, config: dict) -> None:
    """Bind a work folder (trained runs, checkpoints) to its configuration."""
    path = work / "config.json"
    if path.exists() and json.loads(path.read_text()) != config:
        raise ValueError(f"{work} holds runs of another configuration (see {path}); use another --work")
    atomic_write_json(path, config)


# ----------------------------------------------------------------------------------- misc
def prf(flagged_N: np.ndarray, truth_N: np.ndarray) -> dict:
    """Precision, recall, F1 of boolean flags against the truth, and the counts."""
    flagged_N, truth_N = np.asarray(flagged_N, bool), np.asarray(truth_N, bool)
    tp = int((flagged_N & truth_N).sum())
    p = tp / flagged_N.sum() if flagged_N.any() else float("nan")
    r = tp / truth_N.sum() if truth_N.any() else float("nan")
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"flagged": int(flagged_N.sum()), "true_positives": tp, "precision": p, "recall": r, "f1": f1}


def mean_std(values) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1; NaN for one value) and count."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], np.float64)
    if not len(v):
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"), len(v)


def fmt_pm(mean: float, std: float, n: int, scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` in percent (``scale``), or ``mean`` alone for one value, '' for none."""
    if n == 0:
        return ""
    if n == 1 or math.isnan(std):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def machine() -> dict:
    """CPU model (``lscpu``), cores torch may use, threads it uses, versions."""
    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}
