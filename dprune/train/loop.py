"""The training loop: load checkpoint -> epochs (train, record) -> save -> evaluate.

Legend: B batch, C classes, N training samples.

Runs as one process or under torchrun / the deepspeed launcher (rank and world size from the
environment).  Only rank 0 writes files and logs.  Resuming after a kill: the last checkpoint
says how many epochs are done; the store is brought back to exactly that many complete epochs
(an epoch recorded after the checkpoint came from lost model state and is recorded again),
so no epoch is counted twice or lost.  Randomness is reseeded from (seed, epoch, rank) at the
start of every epoch, so a resumed epoch sees the same data order and augmentations as the
uninterrupted run would have.
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from ..data import IndexedDataset, build_dataset, class_dependent_noise, symmetric_noise
from ..fileio import atomic_savez, atomic_write_json
from ..models import build_model
from ..select import load_manifest
from ..store import StoreError, fingerprint
from .config import TrainConfig
from .distributed import World, barrier, close_world, init_world
from .recorder import Recorder

CHECKPOINT = "checkpoint.pt"
DS_CHECKPOINT = "ds_checkpoint"
# The test metric of each task, as metrics.json and the epoch lines name it.
METRIC_NAMES = {"classification": "top-1", "reid": "(mAP+R1)/2"}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    warm = cfg.warmup_epochs * steps_per_epoch
    total = max(1, cfg.epochs * steps_per_epoch)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return f


class _CastInput(torch.nn.Module):
    """Feeds a bf16/fp16 module (DeepSpeed) the dtype it expects."""

    def __init__(self, module: torch.nn.Module, dtype):
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, x):
        return self.module(x if self.dtype is None else x.to(self.dtype))


class Trainer:
    """One training run described by a :class:`TrainConfig`; call :meth:`fit`."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.world: World = init_world(cfg.device)
        self.out = Path(cfg.out)
        if self.world.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        _seed_everything(cfg.seed)  # identical initialisation on every rank
        self._build_data()
        self._build_model()
        self.store = self._open_store() if cfg.record != "off" and self.world.is_main else None
        self.recorder = Recorder(self.store, self.world) if cfg.record != "off" else None
        self.metrics: list[dict] = []

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
            train, test = build_dataset(cfg.dataset, cfg.data_root, seed=cfg.seed, image_size=cfg.image_size,
                                        augment=cfg.augment)
            self.eval_transform = test.transform
            self.test_set = test
        labels = train.labels.copy()
        self.noise_flipped = None
        if cfg.label_noise > 0:
            noise = symmetric_noise if cfg.noise_kind == "symmetric" else class_dependent_noise
            labels, self.noise_flipped = noise(train.labels, train.num_classes, cfg.label_noise, seed=cfg.noise_seed)
            if w.is_main:
                atomic_savez(self.out / "label_noise.npz", {"clean_labels": train.labels, "noisy_labels": labels,
                                                            "flipped": self.noise_flipped})
        self.given_labels = labels
        self.fingerprint = fingerprint(labels, train.sample_ids)
        indices = None
        self.train_labels = labels
        if cfg.manifest:
            m = load_manifest(cfg.manifest, fingerprint=self.fingerprint)
            indices, self.train_labels = m.kept, m.labels
        self.train_set = train
        self.num_classes = train.num_classes
        self.train_ds = IndexedDataset(train, labels_override=self.train_labels, indices=indices)
        pin = w.device.type == "cuda"
        loader_kw = dict(num_workers=cfg.num_workers, pin_memory=pin)
        if cfg.task == "reid":
            from .reid import PKSampler

            self.sampler = PKSampler(self.train_ds.labels, cfg.batch_size // cfg.pk_k, cfg.pk_k,
                                     world_size=w.world_size, rank=w.rank, seed=cfg.seed)
            self.loader = DataLoader(self.train_ds, batch_sampler=self.sampler, **loader_kw)
            self.query_loader = DataLoader(self.query_set, batch_size=128, shuffle=False, **loader_kw)
            self.gallery_loader = DataLoader(self.gallery_set, batch_size=128, shuffle=False, **loader_kw)
        else:
            self.sampler = DistributedSampler(self.train_ds, num_replicas=w.world_size, rank=w.rank, shuffle=True,
                                              seed=cfg.seed, drop_last=False)
            self.loader = DataLoader(self.train_ds, batch_size=cfg.batch_size, sampler=self.sampler, drop_last=False,
                                     **loader_kw)
            self.test_loader = DataLoader(IndexedDataset(self.test_set), batch_size=max(256, cfg.batch_size),
                                          shuffle=False, **loader_kw)
        if cfg.record == "pass":
            # The whole training set, in a fixed order, without augmentation.
            plain = copy.copy(train)
            plain.transform = self.eval_transform
            pass_ds = IndexedDataset(plain, labels_override=self.train_labels, indices=indices)
            self.pass_loader = DataLoader(pass_ds, batch_size=max(256, cfg.batch_size),
                                          sampler=DistributedSampler(pass_ds, num_replicas=w.world_size, rank=w.rank,
                                                                     shuffle=False), **loader_kw)

    def _build_model(self) -> None:
        cfg, w = self.cfg, self.world
        self.steps_per_epoch = len(self.loader) if cfg.max_steps_per_epoch is None else min(len(self.loader), cfg.max_steps_per_epoch)
        if cfg.task == "reid":
            from ..models.reid import BoTReID
            from .reid import step_lr_lambda

            model = BoTReID(self.num_classes, cfg.model, weights=cfg.weights).to(w.device)
            optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                         weight_decay=cfg.weight_decay)
            schedule = step_lr_lambda(cfg.epochs, self.steps_per_epoch, cfg.warmup_epochs or max(1, cfg.epochs // 12))
        else:
            sample = self.train_set[0][0]
            model = build_model(cfg.model, self.num_classes, self.train_set.in_channels, cfg.weights,
                                image_size=int(max(sample.shape[-2:]))).to(w.device)
            optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                        weight_decay=cfg.weight_decay, nesterov=True)
            schedule = _lr_lambda(cfg, self.steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self.amp_dtype = None
        if cfg.backend == "deepspeed":
            import deepspeed

            ds_config = self._deepspeed_config()
            engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer,
                                                                   lr_scheduler=scheduler, config=ds_config)
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
        self.optimizer, self.scheduler = optimizer, scheduler
        self.scaler = torch.amp.GradScaler(enabled=self.amp_dtype == torch.float16 and w.device.type == "cuda")

    def _deepspeed_config(self) -> dict:
        cfg, w = self.cfg, self.world
        if cfg.deepspeed_config:
            ds = json.loads(Path(cfg.deepspeed_config).read_text())
        else:
            bf16 = w.device.type == "cuda" and torch.cuda.is_bf16_supported()
            ds = {"zero_optimization": {"stage": cfg.zero_stage}, "bf16": {"enabled": bf16}}
        ds["train_micro_batch_size_per_gpu"] = cfg.batch_size
        ds.setdefault("gradient_accumulation_steps", 1)
        ds.pop("train_batch_size", None)
        # A client torch optimizer avoids compiling DeepSpeed's fused Adam (minutes on a CPU).
        ds.setdefault("zero_allow_untested_optimizer", True)
        ds.setdefault("steps_per_print", 10**9)
        return ds

    def _open_store(self):
        """Resume the run's store (full or summary, per ``cfg.store``) or create it."""
        from ..summary_store import open_or_create_store

        cfg = self.cfg
        run_dir = self.out / "trajectory"
        store = open_or_create_store(cfg.store, run_dir, self.train_labels, self.num_classes,
                                     sample_ids=self.train_set.sample_ids, dtype=cfg.store_dtype,
                                     epochs_planned=cfg.epochs,
                                     labels_source=cfg.manifest or ("noisy" if cfg.label_noise else "dataset"),
                                     world_size=self.world.world_size)
        # The store holds the labels this run trains with (a manifest's corrected ones included).
        if store.fingerprint != fingerprint(self.train_labels, self.train_set.sample_ids):
            raise StoreError(f"{run_dir} holds a trajectory of another dataset or label set; use a new --out")
        return store

    # ------------------------------------------------------------------------ checkpoints
    def _load_checkpoint(self) -> int:
        """Restore the last checkpoint; return the number of epochs already done."""
        done = 0
        if self.engine is not None:
            ds_dir = self.out / DS_CHECKPOINT
            if (ds_dir / "latest").exists():
                path, client = self.engine.load_checkpoint(str(ds_dir))
                if path is not None:
                    done, self.metrics = int(client["epochs_done"]), list(client["metrics"])
        elif (self.out / CHECKPOINT).exists():
            ckpt = torch.load(self.out / CHECKPOINT, map_location=self.world.device, weights_only=True)
            self.module.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            done, self.metrics = int(ckpt["epochs_done"]), list(ckpt["metrics"])
        if self.store is not None:
            if self.store.epochs_completed < done:
                raise StoreError(f"the checkpoint has {done} epochs done but the store only {self.store.epochs_completed}")
            if self.store.epochs_completed > done:
                self.store.rollback(done)
        return done

    def _save_checkpoint(self, epochs_done: int) -> None:
        client = {"epochs_done": epochs_done, "metrics": self.metrics, "config": asdict(self.cfg)}
        if self.engine is not None:
            ds_dir = self.out / DS_CHECKPOINT
            self.engine.save_checkpoint(str(ds_dir), tag=f"epoch{epochs_done}", client_state=client)
            barrier(self.world)
            if self.world.is_main:  # the 'latest' pointer now names the new tag; drop older ones
                for old in ds_dir.glob("epoch*"):
                    if old.name != f"epoch{epochs_done}":
                        shutil.rmtree(old, ignore_errors=True)
            return
        if self.world.is_main:
            tmp = self.out / f".{CHECKPOINT}.tmp"
            torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), **client}, tmp)
            os.replace(tmp, self.out / CHECKPOINT)

    # ------------------------------------------------------------------------ the loop
    def fit(self) -> list[dict]:
        """Train (and record) the remaining epochs; return per-epoch metrics."""
        try:
            start = self._load_checkpoint()
            for epoch in range(start, self.cfg.epochs):
                _seed_everything(self.cfg.seed * 1_000_003 + epoch * 1009 + self.world.rank)
                self.sampler.set_epoch(epoch)
                if self.recorder:
                    self.recorder.begin_epoch(epoch)
                t0 = time.perf_counter()
                stats = self._train_epoch(epoch) if not self.cfg.frozen else {"samples_seen": 0}
                if self.cfg.record == "pass":
                    self._record_pass(epoch)
                if self.recorder:
                    self.recorder.complete_epoch(epoch)
                barrier(self.world)
                stats.update(epoch=epoch, seconds=time.perf_counter() - t0, **self._evaluate_if_due(epoch))
                self.metrics.append(stats)
                self._save_checkpoint(epoch + 1)
                if self.world.is_main:
                    atomic_write_json(self.out / "metrics.json", self.metrics)
                    train = (f"loss {stats['train_loss']:.4f} train acc {stats['train_acc']:.4f} "
                             if "train_loss" in stats else "")
                    test = ("" if math.isnan(stats["test_metric"])
                            else f"test {stats['metric_name']} {stats['test_metric']:.4f} ")
                    self._log(f"epoch {epoch + 1}/{self.cfg.epochs}: {train}{test}({stats['seconds']:.1f}s)")
            return self.metrics
        finally:
            if self.store is not None:
                self.store.close()
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

    def _train_epoch(self, epoch: int) -> dict:
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
            if self.cfg.record == "train":
                self.recorder.record(epoch, idx_B.to(self.world.device), logits_BC)
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
        self.scheduler.step()

    @torch.no_grad()
    def _record_pass(self, epoch: int) -> None:
        self.model.eval()
        for x_B, _, idx_B in self._bar_iter(self.pass_loader, f"recording {epoch + 1}"):
            with self._autocast():
                x_B = self._to_device(x_B)
                logits_BC = self.module.logits(x_B) if self.cfg.task == "reid" else self.module(x_B)
            self.recorder.record(epoch, idx_B.to(self.world.device), logits_BC)

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
                pred = self.module(self._to_device(x_B)).argmax(1).cpu()
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
