"""What the evidence benchmarks share: data, training through the library's stages, cell files.

- data: :func:`prepare_data` gives scikit-learn's ``digits`` as is, or a class-stratified
  Fashion-MNIST subset written as idx files into the work folder (so every run reads it through
  the library's own ``build_dataset("fashion-mnist", root=...)``), made once under a lock;
- training: :func:`train_config` (a benchmark run's ``TrainConfig``: the CPU, one evaluation
  after the last epoch) and :func:`dprune.stages.train`, which resumes a killed run and returns
  a finished one as it is;
- results: :class:`Cells`, one JSON file per finished cell (written atomically), so a sweep
  is resumable per cell and two processes can share it: each cell's training directory is
  locked by the library while it runs, and a process that finds a run locked moves on to
  another cell (:func:`run_cells`);
- small helpers: :func:`prf`, :func:`mean_std`, :func:`fmt_pm`, :func:`machine`, :func:`auc`.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from dprune.data import FASHION_MNIST_ROOT, read_idx
from dprune.fileio import atomic_write_json
from dprune.locking import DirLock, LockedError
from dprune.store import StoreError
from dprune.train.config import TrainConfig

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
    from sklearn.model_selection import train_test_split

    idx, _ = train_test_split(np.arange(len(labels_N)), train_size=n, stratify=labels_N, random_state=seed)
    return np.sort(idx)


def prepare_data(dataset: str, work: Path, *, n_train: int | None = None, subset_seed: int = 0,
                 source: str | None = None) -> tuple[str | None, dict]:
    """Make the dataset a benchmark trains on; return ``(data_root, description)``.

    ``fashion-mnist``: the whole 10,000-image test set and a class-stratified subset of
    ``n_train`` training images (None: all 60,000), written once under ``work/data``.
    ``digits``: the library's fixed 1,437 / 360 split.
    """
    if dataset == "digits":
        from dprune.data import build_dataset

        train, test = build_dataset("digits")
        return None, {"dataset": "digits", "n_train": len(train), "n_test": len(test),
                      "source": "sklearn.datasets.load_digits, stratified 80/20 split (seed 0)"}
    if dataset != "fashion-mnist":
        raise ValueError(f"dataset must be digits or fashion-mnist, got {dataset!r}")
    src = Path(source) if source else FASHION_MNIST_ROOT
    if not src.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST not found at {src}: install it with "
                                f"`apt-get install dataset-fashion-mnist` or pass --data-root")
    name = f"fashion-mnist-train{n_train or 'all'}-seed{subset_seed}"
    root = work / "data" / name
    desc_path = root / "subset.json"
    while not desc_path.exists():
        try:
            lock = DirLock(work / "data", "writing a dataset subset")
        except LockedError:
            time.sleep(1)  # another process is writing it
            continue
        with lock:
            if desc_path.exists():
                break
            images, labels = {}, {}
            for split, prefix in (("train", "train"), ("test", "t10k")):
                stem = src / f"{prefix}-images-idx3-ubyte"
                images[split] = read_idx(stem if stem.exists() else stem.with_suffix(".gz"), expect_magic=0x803)
                stem = src / f"{prefix}-labels-idx1-ubyte"
                labels[split] = read_idx(stem if stem.exists() else stem.with_suffix(".gz"), expect_magic=0x801)
            keep = _stratified(labels["train"], n_train, subset_seed)
            tmp = root.with_name(f".{name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            _write_idx(tmp / "train-images-idx3-ubyte", images["train"][keep])
            _write_idx(tmp / "train-labels-idx1-ubyte", labels["train"][keep])
            _write_idx(tmp / "t10k-images-idx3-ubyte", images["test"])
            _write_idx(tmp / "t10k-labels-idx1-ubyte", labels["test"])
            atomic_write_json(tmp / "subset.json", {"source": str(src), "subset_seed": subset_seed,
                                                    "train_indices": keep.tolist()})
            shutil.rmtree(root, ignore_errors=True)
            tmp.rename(root)
    sub = json.loads(desc_path.read_text())
    n = len(sub["train_indices"])
    return str(root), {"dataset": "fashion-mnist", "n_train": n, "n_test": 10000,
                       "source": f"{sub['source']}: " + ("all 60,000 training images" if n == 60000 else
                                                         f"class-stratified subset of {n:,} training images "
                                                         f"(seed {subset_seed})") + ", all 10,000 test images"}


# -------------------------------------------------------------------------------- training
def train_config(out: Path, *, seed: int, data_root: str | None, dataset: str, model: str, epochs: int,
                 batch_size: int, lr: float, max_steps: int | None = None, **kw) -> TrainConfig:
    """A benchmark training run: on the CPU, quiet, evaluated only after the last epoch."""
    return TrainConfig.of(out=str(out), dataset=dataset, data_root=data_root, model=model, epochs=epochs,
                       batch_size=batch_size, lr=lr, seed=seed, device="cpu", progress=False, eval_every=0,
                       max_steps_per_epoch=max_steps, **kw)


def store_and_truth(run):
    """The trajectory store of a finished noisy run (a run, or its folder) and its truth
    (``label_noise.npz``: clean labels, noisy labels, flipped), checked against each other."""
    from dprune.store import open_store

    out = Path(run) if isinstance(run, (str, Path)) else Path(run.config.train.out)
    store = open_store(out / "trajectory")
    with np.load(out / "label_noise.npz") as z:
        truth = {k: z[k] for k in ("clean_labels", "noisy_labels", "flipped")}
    if not np.array_equal(truth["noisy_labels"], store.labels):
        raise RuntimeError(f"{store.run_dir}: the store's labels are not the noisy labels")
    return store, truth


# --------------------------------------------------------------------------------- results
class Cells:
    """One JSON file per finished cell under ``directory/cells``, and the configuration beside them.

    A directory made with another configuration is refused, so a rerun never mixes set-ups.
    """

    def __init__(self, directory: Path, config: dict):
        config = json.loads(json.dumps(config))  # as it reads back (tuples become lists)
        self.dir = Path(directory)
        (self.dir / "cells").mkdir(parents=True, exist_ok=True)
        cfg_path = self.dir / "config.json"
        if cfg_path.exists():
            old = json.loads(cfg_path.read_text())
            if old.get("config") != config:
                raise ValueError(f"{self.dir} holds results of another configuration:\n  theirs {old.get('config')}"
                                 f"\n  yours  {config}\nuse another --results-dir")
        else:
            atomic_write_json(cfg_path, {"config": config})
        self.config = config

    def _path(self, key: str) -> Path:
        return self.dir / "cells" / (key.replace("/", "__") + ".json")

    def has(self, key: str) -> bool:
        return self._path(key).exists()

    def get(self, key: str) -> dict:
        return json.loads(self._path(key).read_text())

    def put(self, key: str, value: dict) -> None:
        atomic_write_json(self._path(key), {"key": key, **value,
                                            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def all(self) -> dict[str, dict]:
        out = {}
        for p in sorted((self.dir / "cells").glob("*.json")):
            v = json.loads(p.read_text())
            out[v["key"]] = v
        return out

    def note_run(self, info: dict) -> None:
        """Append the machine and command of a run to ``runs.json``."""
        path = self.dir / "runs.json"
        runs = json.loads(path.read_text()) if path.exists() else []
        atomic_write_json(path, runs + [info])


class NotReady(Exception):
    """A cell needs another cell that is not finished yet (e.g. being run by another process)."""


def run_cells(cells: Cells, todo: list[tuple[str, callable]]) -> None:
    """Run ``(key, fn)`` pairs not finished yet; ``fn()`` returns the cell's dict.

    A cell whose training run is locked by another process, or that raises :class:`NotReady`,
    is skipped and retried after the others, so two processes can work through one sweep side
    by side.
    """
    pending = [(k, f) for k, f in todo if not cells.has(k)]
    while pending:
        postponed = []
        for key, fn in pending:
            if cells.has(key):
                continue
            try:
                t0 = time.perf_counter()
                value = fn()
            except (LockedError, StoreError, NotReady) as e:
                if not isinstance(e, NotReady) and "in use by another writer" not in str(e):
                    raise
                postponed.append((key, fn))
                continue
            cells.put(key, {**value, "cell_wall_s": time.perf_counter() - t0})
            print(f"  done {key}: " + ", ".join(f"{k} {v:.4f}" for k, v in value.items()
                                                if isinstance(v, float) and k in ("acc", "f1")), flush=True)
        if postponed and len(postponed) == len(pending):
            time.sleep(20)  # everything left waits for another process
        pending = postponed


def noise_setting_parser(kinds: tuple[str, ...]):
    """An argparse type for ``KIND:RATE`` (e.g. ``symmetric:0.2``) with KIND among ``kinds``."""
    import argparse

    def parse(text: str) -> tuple[str, float]:
        kind, _, rate = text.partition(":")
        try:
            value = float(rate)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected KIND:RATE such as symmetric:0.2, got {text!r}") from None
        if kind not in kinds or not 0 < value < 1:
            raise argparse.ArgumentTypeError(f"KIND must be one of {kinds} and RATE in (0, 1), got {text!r}")
        return kind, value

    return parse


# --------------------------------------------------------------------------------- verdicts
VERDICT_RULE = ("A beats B when the paired per-seed differences A - B are positive by a one-sided paired t-test "
                "at p < 0.05, or positive in every one of at least 5 seeds; worse when the same holds for B - A; "
                "otherwise the difference is not shown (declared 2026-12-07, before the noisy-data test settings ran)")


def paired_verdict(deltas) -> tuple[str, float]:
    """``("beats" | "worse" | "not shown", p)`` for paired differences A - B by :data:`VERDICT_RULE`.

    ``p`` is the one-sided p-value of the direction that holds (of the likelier one when
    neither does); NaN with fewer than 2 differences.  Identical differences (zero variance)
    count as p = 0 when they are not zero.
    """
    from scipy.stats import ttest_1samp

    d = np.asarray([x for x in deltas if x is not None and not math.isnan(x)], np.float64)
    if len(d) < 2:
        return "not shown", float("nan")
    if np.all(d == d[0]):
        p_up, p_down = (0.0 if d[0] > 0 else 1.0), (0.0 if d[0] < 0 else 1.0)
    else:
        p_up = float(ttest_1samp(d, 0.0, alternative="greater").pvalue)
        p_down = float(ttest_1samp(d, 0.0, alternative="less").pvalue)
    if p_up < 0.05 or (len(d) >= 5 and np.all(d > 0)):
        return "beats", p_up
    if p_down < 0.05 or (len(d) >= 5 and np.all(d < 0)):
        return "worse", p_down
    return "not shown", min(p_up, p_down)


# ----------------------------------------------------------------------------------- misc
def pyplot():
    """matplotlib's pyplot on the Agg backend (files only; no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def checked_rate(flipped_N: np.ndarray, m: int, rng: np.random.Generator) -> float:
    """The share of wrong labels among ``m`` samples drawn uniformly without replacement (the
    injected truth standing in for the person who checks them)."""
    return float(flipped_N[rng.choice(len(flipped_N), m, replace=False)].mean())


def prf(flagged_N: np.ndarray, truth_N: np.ndarray) -> dict:
    """Precision, recall, F1 of boolean flags against the truth, and the counts."""
    flagged_N, truth_N = np.asarray(flagged_N, bool), np.asarray(truth_N, bool)
    tp = int((flagged_N & truth_N).sum())
    p = tp / flagged_N.sum() if flagged_N.any() else float("nan")
    r = tp / truth_N.sum() if truth_N.any() else float("nan")
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"flagged": int(flagged_N.sum()), "true_positives": tp, "precision": p, "recall": r, "f1": f1}


def auc(score_N: np.ndarray, truth_N: np.ndarray) -> dict:
    """AUROC and average precision of a score where higher = more likely positive (NaN scores last)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    s = np.nan_to_num(np.asarray(score_N, np.float64), nan=-np.inf)
    s = np.where(np.isinf(s), np.nanmin(np.where(np.isinf(s), np.nan, s)) - 1, s)
    return {"auroc": float(roc_auc_score(truth_N, s)), "ap": float(average_precision_score(truth_N, s))}


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
    """CPU model (``lscpu``), cores, torch threads, load average, versions."""
    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "load_average": os.getloadavg(), "torch": torch.__version__, "python": platform.python_version()}
