"""The training loop: load checkpoint -> epochs (train, record, maybe prune) -> save -> evaluate.

Legend: B batch, C classes, N training samples, T the epoch after which the run prunes.

Runs as one process or under torchrun / the deepspeed launcher (rank and world size from the
environment).  Only rank 0 writes files and logs, and it holds the run directory's lock for
the whole run (a second writer is refused; the workers of a killed launcher stop by
themselves, see :mod:`dprune.locking`).

Resuming after a kill: the checkpoint says how many epochs are done, in which phase (full
data, or pruned at T with which manifest) and with which configuration.  A resumed run
whose configuration differs is refused, naming the fields (``restart=True`` starts over).
The store is brought back to exactly the checkpoint's epochs (an epoch recorded after the
checkpoint came from lost model state and is recorded again), so no epoch is counted twice
or lost.  Randomness is reseeded from (seed, epoch, rank) at the start of every epoch, so a
resumed epoch sees the same data order and augmentations as the uninterrupted run would.

Pruning inside the run (``prune_at = T``): after epoch T is recorded, checkpointed and
evaluated, rank 0 scores the first T epochs of the store, selects and writes
``OUT/manifest.json`` (atomically, before anything changes); every rank loads that file, and
all must agree on its digest; the checkpoint is saved again in the "pruned" phase; epochs
T+1..E then train on the kept samples with the corrected labels, with the same model,
optimizer and learning-rate schedule.  The schedule is a function of the fractional epoch
(epoch + step / steps in that epoch), so it does not restart: an epoch after T has fewer
steps (ceil(kept / batch) instead of ceil(N / batch) per rank) and each step moves the
schedule further.  A kill before, during or after the selection resumes to the same
result: a manifest already written for these T epochs is reused, not recomputed.
"""
from __future__ import annotations

import copy
import io
import math
import os
import pickle
import random
import shutil
import time
import zipfile
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from ..data import IndexedDataset, build_dataset, class_dependent_noise, symmetric_noise
from ..distributed import World, barrier, broadcast_object, close_world, init_world
from ..fileio import atomic_savez, atomic_write_json, atomic_write_with, read_json
from ..locking import DirLock, watch_parent
from ..manifest import Manifest, load_manifest, npz_is_current, rewrite_npz
from ..models import build_model
from ..recorder import Recorder
from ..rundir import CHECKPOINT, DS_CHECKPOINT, MANIFEST, TRAIN_FILES, TRAJECTORY
from ..store import StoreError, fingerprint
from .config import TrainConfig

# The test metric of each task, as metrics.json and the epoch lines name it.
METRIC_NAMES = {"classification": "top-1", "reid": "(mAP+R1)/2"}
# Fields a resumed run may change: where things are, how much is printed, how often the
# test set is evaluated, how many epochs there are in all, and how the logits reach the store.
RESUME_FREE = {"out", "data_root", "epochs", "progress", "num_workers", "eval_every", "device", "record_writes"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that belongs to another configuration."""


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cosine_lr_factor(cfg: TrainConfig, t: float, steps_in_epoch: int) -> float:
    """Classification schedule at fractional epoch ``t``: linear warm-up, then cosine to 0 at ``epochs``.

    A step is at ``t = epoch + step / steps_in_epoch``; without pruning this is the usual
    per-step schedule (step k of S per epoch: warm-up (k + 1) / (W S), then cosine).
    """
    W, E = cfg.warmup_epochs, cfg.epochs
    if t < W:
        return (t + 1 / steps_in_epoch) / W
    return 0.5 * (1 + math.cos(math.pi * (t - W) / max(E - W, 1e-9)))


def config_changes(saved: dict, cfg: TrainConfig) -> list[str]:
    """``FIELD: saved -> now`` for every field that matters and differs."""
    now = cfg.to_dict()
    return [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in now
            if k not in RESUME_FREE and saved.get(k, now[k]) != now[k]]


class _CastInput(torch.nn.Module):
    """Feeds a bf16/fp16 module (DeepSpeed) the dtype it expects."""

    def __init__(self, module: torch.nn.Module, dtype):
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, x):
        return self.module(x if self.dtype is None else x.to(self.dtype))


class Trainer:
    """One training run described by a :class:`TrainConfig`; call :meth:`fit`.

    ``restart=True`` deletes what an earlier run left in ``cfg.out`` (checkpoint, metrics,
    trajectory, manifest) and starts over; otherwise a checkpoint there is resumed.
    """

    def __init__(self, cfg: TrainConfig, *, restart: bool = False):
        self.cfg = cfg
        self.world: World = init_world(cfg.device)
        self.out = Path(cfg.out)
        self._lock = self._take_run_lock()
        self.recorder = None
        try:
            if self.world.distributed or os.environ.get("TORCHELASTIC_RUN_ID"):
                watch_parent()
            if restart and self.world.is_main:
                self._wipe()
            barrier(self.world)
            _seed_everything(cfg.seed)  # identical initialisation on every rank
            self.phase = "full"
            self.manifest: Manifest | None = None
            self._build_data()
            self._build_model()
            self.metrics: list[dict] = []
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------ run directory
    def _take_run_lock(self) -> DirLock | None:
        lock, error = None, None
        if self.world.is_main:
            if self.out.exists() and not self.out.is_dir():
                error = f"--out {self.out} exists and is not a directory"
            else:
                try:
                    lock = DirLock(self.out, "dprune train")
                except OSError as e:
                    error = str(e)
        error = broadcast_object(self.world, error)
        if error:
            close_world(self.world)
            raise StoreError(error)
        return lock

    def _wipe(self) -> None:
        for name in TRAIN_FILES:  # what restart=True deletes
            p = self.out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    # ------------------------------------------------------------------------ building
    def _build_data(self) -> None:
        cfg, w = self.cfg, self.world
        if cfg.task == "reid":
            from ..data.reid import ReIDImageDataset, build_reid_dataset
            from .reid import reid_transforms

            self.reid = build_reid_dataset(cfg.dataset, cfg.data_root)
            size = (cfg.reid_height, cfg.reid_width)
            train = ReIDImageDataset(self.reid.train, self.reid.root, reid_transforms(*size, train=True))
            self.eval_transform = reid_transforms(*size, train=False)
            self.query_set = ReIDImageDataset(self.reid.query, self.reid.root, self.eval_transform)
            self.gallery_set = ReIDImageDataset(self.reid.gallery, self.reid.root, self.eval_transform)
        else:
            # The data are the same whatever the training seed (digits: its fixed seed-0 split).
            train, test = build_dataset(cfg.dataset, cfg.data_root, image_size=cfg.image_size,
                                        augment=cfg.augment)
            self.eval_transform = test.transform
            self.test_set = test
        if train.num_classes < 2:
            raise ValueError(f"the training set has {train.num_classes} class(es); pruning by soft labels needs >= 2")
        labels = train.labels.copy()
        self._noise_record = None  # written once the checkpoint's configuration is known to match
        if cfg.label_noise > 0:
            noise = symmetric_noise if cfg.noise_kind == "symmetric" else class_dependent_noise
            labels, flipped = noise(train.labels, train.num_classes, cfg.label_noise, seed=cfg.noise_seed)
            self._noise_record = {"clean_labels": train.labels, "noisy_labels": labels, "flipped": flipped}
        if cfg.labels_file:
            from ..importers import read_labels_file
            from ..labels import validate_labels

            labels = validate_labels(read_labels_file(cfg.labels_file), train.num_classes, len(labels),
                                     what=f"labels in {cfg.labels_file}")
            self._noise_record = {"clean_labels": train.labels, "noisy_labels": labels,
                                  "flipped": labels != train.labels}
        self.train_set = train
        self.num_classes = self.real_classes = train.num_classes
        # The dataset's labels (noise injected): the data's identity, which manifests refer to.
        self.given_labels = labels
        self.fingerprint = fingerprint(labels, train.sample_ids)
        indices = None
        # The labels the run starts training with (and records against): the given ones, with
        # threshold samples moved to their fake class, or a manifest's corrected ones.
        self.train_labels = labels
        self.threshold = None
        if cfg.threshold_samples:
            self.train_labels = self._threshold_samples(train, labels)
        if cfg.manifest:
            m = load_manifest(cfg.manifest, fingerprint=self.fingerprint, labels_N=labels)
            self.manifest = m
            indices, self.train_labels = m.kept, m.labels
        if cfg.task == "classification":
            pin = w.device.type == "cuda"
            self.test_loader = DataLoader(IndexedDataset(self.test_set), batch_size=max(256, cfg.batch_size),
                                          shuffle=False, num_workers=cfg.num_workers, pin_memory=pin)
        else:
            loader_kw = dict(num_workers=cfg.num_workers, pin_memory=w.device.type == "cuda")
            self.query_loader = DataLoader(self.query_set, batch_size=128, shuffle=False, **loader_kw)
            self.gallery_loader = DataLoader(self.gallery_set, batch_size=128, shuffle=False, **loader_kw)
        self._make_loaders(indices, self.train_labels)

    def _threshold_samples(self, train, labels: np.ndarray) -> np.ndarray:
        """Move a seeded 1/(C+1) of the samples to a fake class C (Pleiss et al., 2020).

        Their AUM, trained against a label no image deserves, gives the data's own threshold
        for mislabelled samples.  The model and the store get C + 1 classes; the real labels of
        the threshold samples are kept in the store's ``meta.json`` so a manifest can return them.
        """
        C, N = train.num_classes, len(labels)
        rng = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, 0x5EED, 17]))
        idx = np.sort(rng.choice(N, int(round(N / (C + 1))), replace=False))
        self.threshold = {"class": C, "indices": idx.tolist(), "labels": labels[idx].tolist()}
        labels = labels.copy()
        labels[idx] = C
        train.num_classes = self.num_classes = C + 1
        if train.class_names is not None:
            train.class_names = list(train.class_names) + ["(threshold samples)"]
        return labels

    def _make_loaders(self, indices, labels) -> None:
        """The training loader (and the recording pass's) over ``indices`` with ``labels``."""
        cfg, w = self.cfg, self.world
        train = self.train_set
        self.train_ds = IndexedDataset(train, labels_override=labels, indices=indices)
        loader_kw = dict(num_workers=cfg.num_workers, pin_memory=w.device.type == "cuda")
        if cfg.task == "reid":
            from .reid import PKSampler

            self.sampler = PKSampler(self.train_ds.labels, cfg.batch_size // cfg.pk_k, cfg.pk_k,
                                     world_size=w.world_size, rank=w.rank, seed=cfg.seed)
            self.loader = DataLoader(self.train_ds, batch_sampler=self.sampler, **loader_kw)
        else:
            self.sampler = DistributedSampler(self.train_ds, num_replicas=w.world_size, rank=w.rank, shuffle=True,
                                              seed=cfg.seed, drop_last=False)
            self.loader = DataLoader(self.train_ds, batch_size=cfg.batch_size, sampler=self.sampler, drop_last=False,
                                     **loader_kw)
        self.steps_per_epoch = len(self.loader) if cfg.max_steps_per_epoch is None else \
            min(len(self.loader), cfg.max_steps_per_epoch)
        if cfg.record == "pass":
            # The whole (kept) training set, in a fixed order, without augmentation.
            plain = copy.copy(train)
            plain.transform = self.eval_transform
            pass_ds = IndexedDataset(plain, labels_override=labels, indices=indices)
            self.pass_loader = DataLoader(pass_ds, batch_size=max(256, cfg.batch_size),
                                          sampler=DistributedSampler(pass_ds, num_replicas=w.world_size, rank=w.rank,
                                                                     shuffle=False), **loader_kw)

    def _build_model(self) -> None:
        cfg, w = self.cfg, self.world
        if cfg.task == "reid":
            from ..models.reid import BoTReID
            from .reid import step_lr_factor

            model = BoTReID(self.num_classes, cfg.model, weights=cfg.weights).to(w.device)
            optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                         weight_decay=cfg.weight_decay)
            warm = cfg.warmup_epochs or max(1, cfg.epochs // 12)
            self._lr_factor = lambda t, steps: step_lr_factor(cfg.epochs, warm, t)
        else:
            sample = self.train_set[0][0]
            model = build_model(cfg.model, self.num_classes, self.train_set.in_channels, cfg.weights,
                                image_size=int(max(sample.shape[-2:]))).to(w.device)
            optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                        weight_decay=cfg.weight_decay, nesterov=True)
            self._lr_factor = lambda t, steps: cosine_lr_factor(cfg, t, steps)
        # The learning rate is set before every step from the fractional epoch (see the module
        # docstring) on the torch optimizer, which DeepSpeed steps too.  Its param_groups are
        # read anew every time: load_state_dict (resume) replaces the list.
        self._torch_optimizer = optimizer
        self.amp_dtype = None
        if cfg.backend == "deepspeed":
            import deepspeed

            ds_config = self._deepspeed_config()
            engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
            self.engine, self.module = engine, engine.module
            self.model = engine
            # Inputs follow the parameters: DeepSpeed casts the module for bf16/fp16 on GPUs,
            # but not every accelerator does.
            param_dtype = next(engine.module.parameters()).dtype
            self.input_dtype = param_dtype if param_dtype in (torch.bfloat16, torch.float16) else None
            if self.input_dtype is not None:
                # DeepSpeed casts parameters but not BatchNorm's running statistics, and the CPU
                # batch_norm kernel refuses the mix.
                for mod in engine.module.modules():
                    if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
                        mod.running_mean.data = mod.running_mean.data.to(self.input_dtype)
                        mod.running_var.data = mod.running_var.data.to(self.input_dtype)
        else:
            self.engine = None
            self.module = model
            if w.distributed:
                model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[w.local_rank] if w.device.type == "cuda" else None)
            self.model = model
            self.input_dtype = None
            amp = cfg.amp
            if amp == "auto":
                amp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if w.device.type == "cuda" else "off"
            self.amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.optimizer = optimizer
        self.scaler = torch.amp.GradScaler(enabled=self.amp_dtype == torch.float16 and w.device.type == "cuda")

    def _set_lr(self, epoch: int, step: int) -> None:
        f = self._lr_factor(epoch + step / self.steps_per_epoch, self.steps_per_epoch)
        for g in self._torch_optimizer.param_groups:
            g["lr"] = self.cfg.lr * f

    def _deepspeed_config(self) -> dict:
        cfg, w = self.cfg, self.world
        if cfg.deepspeed_config:
            ds = read_json(Path(cfg.deepspeed_config), "DeepSpeed config")
            if not isinstance(ds, dict):
                raise ValueError(f"{cfg.deepspeed_config}: a DeepSpeed config must be a JSON object")
        else:
            bf16 = w.device.type == "cuda" and torch.cuda.is_bf16_supported()
            ds = {"zero_optimization": {"stage": cfg.zero_stage}, "bf16": {"enabled": bf16}}
        ds["train_micro_batch_size_per_gpu"] = cfg.batch_size
        ds.setdefault("gradient_accumulation_steps", 1)
        ds.pop("train_batch_size", None)
        ds.pop("scheduler", None)  # the trainer sets the learning rate itself
        # A client torch optimizer avoids compiling DeepSpeed's fused Adam (minutes on a CPU).
        ds.setdefault("zero_allow_untested_optimizer", True)
        ds.setdefault("steps_per_print", 10**9)
        return ds

    def _open_recorder(self) -> Recorder:
        """Resume the run's store (full or summary, per ``cfg.store``) or create it, and its recorder.

        The store holds the labels the run starts training with (``train_labels``).
        """
        cfg = self.cfg
        labels = self.train_labels
        rec = Recorder(self.out / TRAJECTORY, labels=labels, n_classes=self.num_classes,
                       sample_ids=self.train_set.sample_ids, kind=cfg.store, dtype=cfg.store_dtype,
                       epochs=cfg.record_epochs or cfg.epochs, world=self.world,
                       labels_source=cfg.manifest or ("noisy" if cfg.label_noise else "dataset"),
                       meta={"threshold_samples": self.threshold} if self.threshold else None,
                       writes=cfg.record_writes)
        return rec  # the store refuses another dataset's labels, ids or classes (RunDirStore.check_identity)

    @property
    def store(self):
        return None if self.recorder is None else self.recorder.store

    def _records(self, epoch: int) -> bool:
        return self.recorder is not None and (self.cfg.record_epochs is None or epoch < self.cfg.record_epochs)

    # ------------------------------------------------------------------------ checkpoints
    def _load_checkpoint(self) -> int:
        """Restore the last checkpoint (refusing another configuration); return the epochs already done."""
        done, client = 0, None
        self._resumed_digest = None
        if self.engine is not None:
            ds_dir = self.out / DS_CHECKPOINT
            if (ds_dir / "latest").exists():
                path, client = self.engine.load_checkpoint(str(ds_dir))
                if path is None:
                    raise CheckpointError(f"{ds_dir} holds no loadable DeepSpeed checkpoint; use --restart")
        elif (self.out / CHECKPOINT).exists():
            path = self.out / CHECKPOINT
            try:
                ckpt = torch.load(path, map_location=self.world.device, weights_only=True)
            except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, zipfile.BadZipFile, OSError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise CheckpointError(f"{path} is not a readable dprune checkpoint ({first}); "
                                      f"delete it or pass --restart") from None
            if not isinstance(ckpt, dict) or not {"model", "optimizer", "epochs_done", "config"} <= set(ckpt):
                raise CheckpointError(f"{path} is not a dprune checkpoint; delete it or pass --restart")
            client = ckpt
        if client is not None:
            self._check_resume(client)
            if self.engine is None:
                try:
                    self.module.load_state_dict(client["model"])
                    self.optimizer.load_state_dict(client["optimizer"])
                    self.scaler.load_state_dict(client["scaler"])
                except (RuntimeError, ValueError, KeyError) as e:
                    raise CheckpointError(f"{self.out / CHECKPOINT} does not fit this model: "
                                          f"{str(e).splitlines()[0]}; use --restart") from None
            done, self.metrics = int(client["epochs_done"]), list(client["metrics"])
            self.phase = client.get("phase", "full")
            self._resumed_digest = client.get("manifest_digest")
        return done

    def _start_writing(self, done: int) -> None:
        """After the checkpoint check passed: the noise record, and the store brought to ``done`` epochs.

        Nothing in the run directory is written before (a refused resume leaves it as it was).
        A run recording the first K epochs has a store of ``min(done, K)`` epochs.
        """
        if self._noise_record is not None and self.world.is_main:
            atomic_savez(self.out / "label_noise.npz", self._noise_record)
        if self.cfg.record != "off":
            self.recorder = self._open_recorder()
            self.recorder.sync(done, record_epochs=self.cfg.record_epochs)

    def _check_resume(self, client: dict) -> None:
        changes = config_changes(client.get("config", {}), self.cfg)
        if self.manifest is not None and client.get("manifest_digest") != self.manifest.digest:
            changes.append(f"manifest content: {str(client.get('manifest_digest'))[:12]} -> {self.manifest.digest[:12]}")
        if changes:
            raise CheckpointError(f"{self.out} holds a run with another configuration ({'; '.join(changes)}); "
                                  f"rerun with its settings, or pass --restart to start a new run there")

    def _save_checkpoint(self, epochs_done: int) -> None:
        client = {"epochs_done": epochs_done, "metrics": self.metrics, "config": self.cfg.to_dict(),
                  "phase": self.phase, "manifest_digest": None if self.manifest is None else self.manifest.digest}
        if self.engine is not None:
            ds_dir = self.out / DS_CHECKPOINT
            tag = f"epoch{epochs_done}-{self.phase}"
            self.engine.save_checkpoint(str(ds_dir), tag=tag, client_state=client)
            barrier(self.world)
            if self.world.is_main:  # the 'latest' pointer now names the new tag; drop older ones
                for old in ds_dir.glob("epoch*"):
                    if old.name != tag:
                        shutil.rmtree(old, ignore_errors=True)
            return
        if self.world.is_main:
            state = {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scaler": self.scaler.state_dict(), **client}
            # Serialised in memory first, so a full disk is a plain OSError (ENOSPC) on write.
            buf = io.BytesIO()
            torch.save(state, buf)
            atomic_write_with(self.out / CHECKPOINT, lambda f: f.write(buf.getbuffer()))

    # ------------------------------------------------------------------------ pruning inside the run
    def _prune(self) -> None:
        """Select at the end of epoch T (or reuse the manifest written for it), then switch every rank."""
        cfg, w = self.cfg, self.world
        path = self.out / MANIFEST
        digest, error = None, None
        if w.is_main:
            try:
                digest = self._select_or_reuse(path)
            except (ValueError, OSError) as e:
                error = f"{type(e).__name__}: {e}"
        digest, error = broadcast_object(w, (digest, error))
        if error:
            raise StoreError(f"pruning at epoch {cfg.prune_at} failed: {error}")
        self._switch_to(load_manifest(path, fingerprint=self.fingerprint, labels_N=self.given_labels), digest)

    def _select_or_reuse(self, path: Path) -> str:
        from ..pruning import prune_store

        T, spec = self.cfg.prune_at, self.cfg.prune_spec()
        made_from = self.store.identity(T)
        if path.exists():
            try:
                m = load_manifest(path, fingerprint=self.fingerprint, labels_N=self.given_labels)
                if m.data.get("made_from") == made_from and m.data.get("selection") == spec.to_dict():
                    self._log(f"reusing {path} (made at epoch {T} before the run was interrupted)")
                    if not npz_is_current(path):  # killed between the JSON and the npz
                        rewrite_npz(m, path)
                    return m.digest
            except ValueError:
                pass
        t0 = time.perf_counter()
        done = prune_store(self.store, spec, path, first_epochs=T, extra={"pruned_in_run": {"at_epoch": T}})
        sel = done.selection
        self._log(f"pruned at epoch {T}: kept {len(sel.kept)} of {len(sel.labels_final)} samples (pruned "
                  f"{len(sel.pruned)} by {spec.method}, removed {len(sel.outlier_index)}, relabelled "
                  f"{len(sel.relabel_index)}) in {time.perf_counter() - t0:.1f}s -> {path}")
        return done.manifest.digest

    def _switch_to(self, manifest: Manifest, digest: str) -> None:
        if manifest.digest != digest:
            raise StoreError(f"rank {self.world.rank} read a manifest that differs from rank 0's; is {self.out} "
                             f"on a file system every rank sees?")
        self.manifest = manifest
        self.phase = "pruned"
        self._make_loaders(manifest.kept, manifest.labels)

    # ------------------------------------------------------------------------ the loop
    def fit(self) -> list[dict]:
        """Train (and record) the remaining epochs; return per-epoch metrics."""
        cfg = self.cfg
        try:
            start = self._load_checkpoint()
            self._start_writing(start)
            if cfg.prune_at is not None and start >= cfg.prune_at:
                if self.phase == "pruned":
                    m = load_manifest(self.out / MANIFEST, fingerprint=self.fingerprint, labels_N=self.given_labels)
                    if self._resumed_digest != m.digest:
                        raise CheckpointError(f"{self.out / MANIFEST} is not the manifest this run switched to; "
                                              f"use --restart")
                    self._switch_to(m, m.digest)
                else:  # killed between the checkpoint of epoch T and the switch
                    self._prune()
                    self._save_checkpoint(start)
            for epoch in range(start, cfg.epochs):
                _seed_everything(cfg.seed * 1_000_003 + epoch * 1009 + self.world.rank)
                self.sampler.set_epoch(epoch)
                recording = self._records(epoch)
                if recording:
                    self.recorder.begin_epoch(epoch)
                t0 = time.perf_counter()
                stats = self._train_epoch(epoch, recording) if not cfg.frozen else {"samples_seen": 0}
                if cfg.record == "pass" and recording:
                    self._record_pass(epoch)
                if recording:
                    self.recorder.complete_epoch(epoch)
                barrier(self.world)
                stats.update(epoch=epoch, phase=self.phase, seconds=time.perf_counter() - t0,
                             **self._evaluate_if_due(epoch))
                self.metrics.append(stats)
                self._save_checkpoint(epoch + 1)
                if self.world.is_main:
                    atomic_write_json(self.out / "metrics.json", self.metrics)
                    train = (f"loss {stats['train_loss']:.4f} train acc {stats['train_acc']:.4f} "
                             if "train_loss" in stats else "")
                    test = ("" if math.isnan(stats["test_metric"])
                            else f"test {stats['metric_name']} {stats['test_metric']:.4f} ")
                    self._log(f"epoch {epoch + 1}/{cfg.epochs}: {train}{test}({stats['seconds']:.1f}s)")
                if cfg.prune_at is not None and epoch + 1 == cfg.prune_at:
                    self._prune()
                    self._save_checkpoint(epoch + 1)
            return self.metrics
        finally:
            self.close()

    def close(self) -> None:
        """Stop the recorder, release the run directory and the process group (idempotent)."""
        if self.recorder is not None:
            self.recorder.close()
        if self._lock is not None:
            self._lock.release()
        close_world(self.world)

    def _evaluate_if_due(self, epoch: int) -> dict:
        """``evaluate()`` after every ``eval_every``-th epoch and the last; else the metric is NaN."""
        every = self.cfg.eval_every
        if epoch + 1 == self.cfg.epochs or (every and (epoch + 1) % every == 0):
            return self.evaluate()
        return {"test_metric": float("nan"), "metric_name": METRIC_NAMES[self.cfg.task]}

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.world.device.type, dtype=self.amp_dtype)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.world.device, non_blocking=True)
        return x.to(self.input_dtype) if self.input_dtype is not None else x

    def _train_epoch(self, epoch: int, recording: bool) -> dict:
        self.model.train()
        loss_sum = torch.zeros((), device=self.world.device)
        correct = torch.zeros((), device=self.world.device)
        seen = 0
        bar = self._bar(self.steps_per_epoch, f"epoch {epoch + 1}/{self.cfg.epochs}")
        for step, (x_B, y_B, idx_B) in enumerate(self.loader):
            if step >= self.steps_per_epoch:
                break
            x_B, y_B = self._to_device(x_B), y_B.to(self.world.device, non_blocking=True)
            with self._autocast():
                out = self.model(x_B)
                logits_BC = out.logits if self.cfg.task == "reid" else out
                loss = F.cross_entropy(logits_BC.float(), y_B, label_smoothing=self.cfg.label_smoothing)
                if self.cfg.task == "reid":
                    from .reid import batch_hard_triplet_loss

                    loss = loss + batch_hard_triplet_loss(out.feat, y_B, self.cfg.triplet_margin)
            if recording and self.cfg.record == "train":
                self.recorder.record(idx_B, logits_BC)
            self._set_lr(epoch, step)
            self._step(loss)
            loss_sum += loss.detach() * len(y_B)
            correct += (logits_BC.detach().argmax(1) == y_B).sum()
            seen += len(y_B)
            bar.update(1)
        bar.close()
        totals = torch.stack([loss_sum, correct.float(), torch.tensor(float(seen), device=self.world.device)])
        if self.world.distributed:
            torch.distributed.all_reduce(totals)
        return {"train_loss": (totals[0] / totals[2]).item(), "train_acc": (totals[1] / totals[2]).item(),
                "samples_seen": int(totals[2].item())}

    def _step(self, loss: torch.Tensor) -> None:
        if self.engine is not None:
            self.engine.backward(loss)
            self.engine.step()
            return
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    @torch.no_grad()
    def _record_pass(self, epoch: int) -> None:
        self.model.eval()
        for x_B, _, idx_B in self._bar_iter(self.pass_loader, f"recording {epoch + 1}"):
            with self._autocast():
                x_B = self._to_device(x_B)
                logits_BC = self.module.logits(x_B) if self.cfg.task == "reid" else self.module(x_B)
            self.recorder.record(idx_B, logits_BC)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Test metrics on rank 0 (other ranks get {}): ``test_metric`` is the headline number.

        Classification: top-1 accuracy.  ReID: mAP, CMC Rank-1/5/10, mINP on query/gallery
        (flip-averaged features), headline (mAP + Rank-1) / 2.
        """
        if not self.world.is_main:
            return {}
        self.module.eval()
        if self.cfg.task == "reid":
            from ..evaluate.reid import evaluate_reid, extract_features

            net = _CastInput(self.module, self.input_dtype)
            with self._autocast():
                q = extract_features(net, self.query_loader, self.world.device)
                g = extract_features(net, self.gallery_loader, self.world.device)
            r = evaluate_reid(q.features, g.features, q.pids, g.pids, q.camids, g.camids, device=self.world.device)
            return {"test_metric": r["mAP_rank1_mean"], "metric_name": METRIC_NAMES["reid"], "mAP": r["mAP"],
                    "rank1": r["rank1"], "rank5": r["rank5"], "rank10": r["rank10"], "mINP": r["mINP"]}
        correct = total = 0
        for x_B, y_B, _ in self.test_loader:
            with self._autocast():
                # Threshold samples add a fake class: predictions are over the real ones.
                pred = self.module(self._to_device(x_B))[:, : self.real_classes].argmax(1).cpu()
            correct += int((pred == y_B).sum())
            total += len(y_B)
        acc = correct / max(1, total)
        return {"test_metric": acc, "metric_name": METRIC_NAMES["classification"], "test_acc": acc}

    # ------------------------------------------------------------------------ output
    def _bar(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="step", leave=False,
                    disable=not (self.cfg.progress and self.world.is_main))

    def _bar_iter(self, it, desc: str):
        from tqdm.auto import tqdm

        return tqdm(it, desc=desc, unit="batch", leave=False, disable=not (self.cfg.progress and self.world.is_main))

    def _log(self, msg: str) -> None:
        if self.world.is_main and self.cfg.progress:
            from tqdm.auto import tqdm

            tqdm.write(msg)
