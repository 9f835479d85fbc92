"""The run's training data: which labels it trains with, and the loaders over the kept samples.

Legend: N training samples, C classes.

Three sets of labels matter (:class:`RunData`):

* ``given_labels``: the dataset's, with injected noise or a labels file applied: the data's
  identity (``fingerprint``), which manifests refer to;
* ``train_labels``: what the run starts training with and records against: the given ones,
  with threshold samples moved to their fake class, or a manifest's corrected ones;
* a manifest's final labels, once a run trains on one (:func:`make_loaders`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from ..data import IndexedDataset, class_dependent_noise, symmetric_noise
from ..distributed import World
from ..manifest import Manifest, load_manifest
from ..recorder import Recorder
from ..store import fingerprint
from ..threshold import CLASS_NAME, ThresholdSamples, draw
from .config import TrainConfig


@dataclass
class RunData:
    train_set: object
    given_labels: np.ndarray
    fingerprint: dict
    train_labels: np.ndarray
    num_classes: int
    """C of the model and the store (the fake class of threshold samples included)."""
    real_classes: int
    threshold: ThresholdSamples | None
    manifest: Manifest | None
    noise_record: dict | None
    """Clean and training labels, for ``label_noise.npz`` when they differ."""


def build_run_data(cfg: TrainConfig, train) -> RunData:
    """Labels of the training set ``train`` as ``cfg`` asks (noise, labels file, threshold samples, manifest)."""
    if train.num_classes < 2:
        raise ValueError(f"the training set has {train.num_classes} class(es); pruning by soft labels needs >= 2")
    labels, noise_record = train.labels.copy(), None
    if cfg.data.label_noise > 0:
        noise = symmetric_noise if cfg.data.noise_kind == "symmetric" else class_dependent_noise
        labels, flipped = noise(train.labels, train.num_classes, cfg.data.label_noise, seed=cfg.data.noise_seed)
        noise_record = {"clean_labels": train.labels, "noisy_labels": labels, "flipped": flipped}
    if cfg.data.labels_file:
        from ..importers import read_labels_file
        from ..labels import validate_labels

        labels = validate_labels(read_labels_file(cfg.data.labels_file), train.num_classes, len(labels),
                                 what=f"labels in {cfg.data.labels_file}")
        noise_record = {"clean_labels": train.labels, "noisy_labels": labels, "flipped": labels != train.labels}
    fp = fingerprint(labels, train.sample_ids)
    real = train.num_classes
    train_labels, threshold, manifest = labels, None, None
    if cfg.record.threshold_samples:
        threshold = draw(labels, real, cfg.seed)
        train_labels = threshold.apply(labels)
        train.num_classes = real + 1
        if train.class_names is not None:
            train.class_names = list(train.class_names) + [CLASS_NAME]
    if cfg.data.manifest:
        manifest = load_manifest(cfg.data.manifest, fingerprint=fp, labels_N=labels)
        train_labels = manifest.labels
    return RunData(train, labels, fp, train_labels, train.num_classes, real, threshold, manifest, noise_record)


@dataclass
class Loaders:
    sampler: object
    """Has ``set_epoch``; reseeded every epoch."""
    loader: DataLoader
    steps_per_epoch: int
    pass_loader: DataLoader | None
    """The recording pass (``record="pass"``): the whole kept set, fixed order, no augmentation."""


def make_loaders(cfg: TrainConfig, world: World, task, train, labels_N: np.ndarray, indices=None) -> Loaders:
    """The training loader (and the recording pass's) over ``indices`` (None: all) with ``labels_N``."""
    train_ds = IndexedDataset(train, labels_override=labels_N, indices=indices)
    loader_kw = dict(num_workers=cfg.data.num_workers, pin_memory=world.device.type == "cuda")
    sampler = task.sampler(train_ds)
    loader = task.loader(train_ds, sampler, **loader_kw)
    steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
    pass_loader = None
    if cfg.record.mode == "pass":
        plain = copy.copy(train)
        plain.transform = task.eval_transform
        pass_ds = IndexedDataset(plain, labels_override=labels_N, indices=indices)
        pass_loader = DataLoader(pass_ds, batch_size=max(256, cfg.data.batch_size), **loader_kw,
                                 sampler=DistributedSampler(pass_ds, num_replicas=world.world_size, rank=world.rank,
                                                            shuffle=False))
    return Loaders(sampler, loader, steps, pass_loader)


def open_recorder(cfg: TrainConfig, world: World, data: RunData, store_dir, fold) -> Recorder:
    """The recorder of the run's store (resumed or created), recording against ``data.train_labels``."""
    thr, rec = data.threshold, cfg.record
    return Recorder(store_dir, labels=data.train_labels, n_classes=data.num_classes,
                    sample_ids=data.train_set.sample_ids, kind=rec.store, dtype=rec.store_dtype,
                    epochs=rec.record_epochs or cfg.epochs, world=world, writes=rec.record_writes, fold=fold,
                    labels_source=cfg.data.manifest or ("noisy" if cfg.data.label_noise else "dataset"),
                    meta=None if thr is None else thr.to_meta())
