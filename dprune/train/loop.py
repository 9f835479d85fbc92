"""The training loop: load checkpoint -> epochs (train, record, save, evaluate, maybe prune).

Legend: B batch, C classes, N training samples, T the epoch after which the run prunes.

The parts are injected: the task (:mod:`.tasks`: data, model, loss, evaluation), the engine
(:mod:`.engines`: step, checkpoint save and load), the recorder's summary fold, and for
prune-in-run an end-of-epoch hook (:class:`PruneHook`, built by :mod:`dprune.stages`).

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

Pruning inside the run: after epoch T is recorded, checkpointed and evaluated, rank 0 calls
the hook, which writes ``OUT/manifest.json`` and returns its digest; every rank reads that
file once and checks the digest; the checkpoint is saved again in the "pruned" phase, and
epochs T+1..E train on the kept samples with the corrected labels, same model, optimizer
and schedule.  The schedule is a function of the fractional epoch (epoch + step / steps in
that epoch), so it does not restart.  A kill around the selection resumes to the same
result (the hook reuses a manifest already written for these T epochs).
"""
from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from ..distributed import World, barrier, broadcast_object, close_world, init_world
from ..fileio import atomic_savez, atomic_write_json
from ..locking import watch_parent
from ..manifest import Manifest, load_manifest
from ..rundir import MANIFEST, TRAJECTORY
from ..store import StoreError
from .checkpoint import CHECKPOINT_FORMAT, CheckpointError, check_resume, run_identity, take_run_lock, wipe
from .config import TrainConfig
from .data import build_run_data, make_loaders, open_recorder
from .engines import ENGINES
from .output import Output
from .tasks import TASK_CLASSES


class PruneHook(Protocol):
    """Prune-in-run, as the trainer sees it (:class:`dprune.pruning.PruneInRun`)."""

    at_epoch: int

    def identity(self) -> dict:
        """Recorded in the checkpoint; a resumed run must have the same."""

    def __call__(self, store, path: Path, log: Callable[[str], None]) -> str:
        """Rank 0, after epoch ``at_epoch``: write the manifest at ``path``; return its digest."""


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """One training run described by a :class:`TrainConfig`; call :meth:`fit`.

    ``prune``: the end-of-epoch hook of prune-in-run; ``fold``: the summary store's folding
    rule (needed when ``cfg.record.store == "summary"``).  ``restart=True`` deletes what an earlier
    run left in ``cfg.out`` (checkpoint, metrics, trajectory, manifest) and starts over;
    otherwise a checkpoint there is resumed.
    """

    def __init__(self, cfg: TrainConfig, *, restart: bool = False, prune: PruneHook | None = None, fold=None):
        self.cfg, self.prune, self.fold = cfg, prune, fold
        self.world: World = init_world(cfg.distributed.device)
        self.out = Path(cfg.out)
        self.log = Output(cfg.progress and self.world.is_main)
        self._lock = take_run_lock(self.world, self.out)
        self.recorder = None
        try:
            if self.world.distributed or os.environ.get("TORCHELASTIC_RUN_ID"):
                watch_parent()
            if restart and self.world.is_main:
                wipe(self.out)
            barrier(self.world)
            _seed_everything(cfg.seed)  # identical initialisation on every rank
            self.phase, self.metrics, self._resumed_digest = "full", [], None
            self.task = TASK_CLASSES[cfg.task](cfg, self.world)
            self.data = build_run_data(cfg, self.task.build_data())
            self.manifest: Manifest | None = self.data.manifest
            self._use(self.data.train_labels, None if self.manifest is None else self.manifest.kept)
            model, optimizer, self._lr_factor = self.task.build_model(self.data.train_set, self.data.num_classes)
            self.engine = ENGINES[cfg.distributed.backend](cfg, self.world, model, optimizer)
        except BaseException:
            self.close()
            raise

    def _use(self, labels_N: np.ndarray, indices) -> None:
        """Train (and record) from now on over ``indices`` (None: all) with ``labels_N``."""
        self.loaders = make_loaders(self.cfg, self.world, self.task, self.data.train_set, labels_N, indices)

    @property
    def store(self):
        return None if self.recorder is None else self.recorder.store

    # ------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The trainer's part of a checkpoint (the engine adds the model and optimizer)."""
        return {"format": CHECKPOINT_FORMAT, "epochs_done": len(self.metrics), "metrics": self.metrics,
                "config": run_identity(self.cfg, self.prune), "phase": self.phase,
                "manifest_digest": None if self.manifest is None else self.manifest.digest}

    def load_state_dict(self, state: dict) -> None:
        """Refuse a checkpoint of another configuration (naming the fields), else take its position."""
        check_resume(self.out, state, run_identity(self.cfg, self.prune),
                     None if self.manifest is None else self.manifest.digest)
        self.metrics, self.phase = list(state["metrics"]), state["phase"]
        self._resumed_digest = state["manifest_digest"]

    def _save(self) -> None:
        self.engine.save(self.out, self.state_dict())

    def _start(self) -> int:
        """Resume from the checkpoint; then write: the noise record, the store at the checkpoint's epochs.

        Nothing in the run directory is written before the checkpoint's check passes.
        """
        self.engine.load(self.out, self.load_state_dict)
        done = len(self.metrics)
        if self.data.noise_record is not None and self.world.is_main:
            atomic_savez(self.out / "label_noise.npz", self.data.noise_record)
        if self.cfg.record.mode != "off":
            self.recorder = open_recorder(self.cfg, self.world, self.data, self.out / TRAJECTORY, self.fold)
            self.recorder.sync(done, record_epochs=self.cfg.record.record_epochs)
        return done

    # ------------------------------------------------------------------------ pruning inside the run
    def _prune(self) -> None:
        """Rank 0 runs the hook (or it reuses the manifest written for epoch T); every rank switches."""
        path = self.out / MANIFEST
        digest, error = None, None
        if self.world.is_main:
            try:
                digest = self.prune(self.store, path, self.log)
            except (ValueError, OSError) as e:
                error = f"{type(e).__name__}: {e}"
        digest, error = broadcast_object(self.world, (digest, error))
        if error:
            raise StoreError(f"pruning at epoch {self.prune.at_epoch} failed: {error}")
        self._switch_to(digest, StoreError, f"is {self.out} on a file system every rank sees?")

    def _switch_to(self, digest: str, error: type, hint: str) -> None:
        """Read the manifest (once) and train on its kept samples with its labels; ``error(hint)`` if
        it is not the one of ``digest``."""
        m = load_manifest(self.out / MANIFEST, fingerprint=self.data.fingerprint, labels_N=self.data.given_labels)
        if m.digest != digest:
            raise error(f"rank {self.world.rank}: {self.out / MANIFEST} is not the manifest this run switched to; "
                        f"{hint}")
        self.manifest, self.phase = m, "pruned"
        self._use(m.labels, m.kept)

    # ------------------------------------------------------------------------ the loop
    def fit(self) -> list[dict]:
        """Train (and record) the remaining epochs; return per-epoch metrics."""
        cfg, T = self.cfg, None if self.prune is None else self.prune.at_epoch
        try:
            start = self._start()
            if T is not None and start >= T:
                if self.phase == "pruned":
                    self._switch_to(self._resumed_digest, CheckpointError, "use --restart")
                else:  # killed between the checkpoint of epoch T and the switch
                    self._prune()
                    self._save()
            for epoch in range(start, cfg.epochs):
                self._epoch(epoch)
                if epoch + 1 == T:
                    self._prune()
                    self._save()
            return self.metrics
        finally:
            self.close()

    def _epoch(self, epoch: int) -> None:
        """Train (and record) one epoch, then checkpoint, evaluate when due and report."""
        cfg = self.cfg
        _seed_everything(cfg.seed * 1_000_003 + epoch * 1009 + self.world.rank)
        self.loaders.sampler.set_epoch(epoch)
        last = cfg.record.record_epochs
        recording = self.recorder is not None and (last is None or epoch < last)
        if recording:
            self.recorder.begin_epoch(epoch)
        t0 = time.perf_counter()
        stats = self._train_epoch(epoch, recording) if not cfg.frozen else {"samples_seen": 0}
        if cfg.record.mode == "pass" and recording:
            self._record_pass(epoch)
        if recording:
            self.recorder.complete_epoch(epoch)
        barrier(self.world)
        stats.update(epoch=epoch, phase=self.phase, seconds=time.perf_counter() - t0, **self._evaluate_if_due(epoch))
        self.metrics.append(stats)
        self._save()
        if self.world.is_main:
            atomic_write_json(self.out / "metrics.json", self.metrics)
            self.log.epoch_line(stats, epoch, cfg.epochs)

    def _train_epoch(self, epoch: int, recording: bool) -> dict:
        engine, device, steps = self.engine, self.world.device, self.loaders.steps_per_epoch
        engine.model.train()
        loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
        bar = self.log.bar(steps, f"epoch {epoch + 1}/{self.cfg.epochs}")
        for step, (x_B, y_B, idx_B) in enumerate(self.loaders.loader):
            if step >= steps:
                break
            x_B, y_B = engine.to_device(x_B), y_B.to(device, non_blocking=True)
            with engine.autocast():
                loss, logits_BC = self.task.loss(engine.model(x_B), y_B)
            if recording and self.cfg.record.mode == "train":
                self.recorder.record(idx_B, logits_BC)
            self._set_lr(epoch, step)
            engine.step(loss)
            loss_sum += loss.detach() * len(y_B)
            correct += (logits_BC.detach().argmax(1) == y_B).sum()
            seen += len(y_B)
            bar.update(1)
        bar.close()
        totals = torch.stack([loss_sum, correct.float(), torch.tensor(float(seen), device=device)])
        if self.world.distributed:
            torch.distributed.all_reduce(totals)
        return {"train_loss": (totals[0] / totals[2]).item(), "train_acc": (totals[1] / totals[2]).item(),
                "samples_seen": int(totals[2].item())}

    def _set_lr(self, epoch: int, step: int) -> None:
        """The schedule at the fractional epoch, on the torch optimizer (which DeepSpeed steps too)."""
        steps = self.loaders.steps_per_epoch
        for g in self.engine.optimizer.param_groups:  # read anew: a resumed optimizer has new groups
            g["lr"] = self.cfg.optim.lr * self._lr_factor(epoch + step / steps, steps)

    @torch.no_grad()
    def _record_pass(self, epoch: int) -> None:
        self.engine.model.eval()
        for x_B, _, idx_B in self.log.bar_iter(self.loaders.pass_loader, f"recording {epoch + 1}"):
            with self.engine.autocast():
                logits_BC = self.task.logits(self.engine.module, self.engine.to_device(x_B))
            self.recorder.record(idx_B, logits_BC)

    def _evaluate_if_due(self, epoch: int) -> dict:
        """``evaluate()`` after every ``eval_every``-th epoch and the last; else the metric is NaN."""
        every = self.cfg.eval_every
        if epoch + 1 == self.cfg.epochs or (every and (epoch + 1) % every == 0):
            return self.evaluate()
        return {"test_metric": math.nan, "metric_name": self.task.metric_name}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Test metrics on rank 0 (other ranks get {}): ``test_metric`` is the headline number."""
        if not self.world.is_main:
            return {}
        self.engine.module.eval()
        return self.task.evaluate(self.engine, self.data.real_classes)

    def close(self) -> None:
        """Stop the recorder, release the run directory and the process group (idempotent)."""
        if self.recorder is not None:
            self.recorder.close()
        if self._lock is not None:
            self._lock.release()
        close_world(self.world)
