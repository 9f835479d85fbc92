"""Engines: one per backend, each doing the optimiser step and the checkpoint's save and load.

Legend: B batch.

The loop (:mod:`.loop`) never asks which backend runs: it calls ``engine.step(loss)``,
``engine.save(out, client_state)`` and ``engine.load(out)``.  ``client_state`` is the
trainer's own :meth:`~.loop.Trainer.state_dict`; the engine stores it beside the model and
optimizer state and hands it back on load.

* :class:`TorchEngine` (``backend="ddp"``): plain torch on one process, wrapped in
  ``DistributedDataParallel`` under a launcher; autocast and, for fp16 on CUDA, loss
  scaling.  One file, ``OUT/checkpoint.pt``, written by rank 0.
* :class:`DeepSpeedEngine` (``backend="deepspeed"``): ``deepspeed.initialize`` around the
  task's model and torch optimizer; ``OUT/ds_checkpoint/<tag>`` written by every rank.
"""
from __future__ import annotations

import io
import pickle
import shutil
import zipfile
from contextlib import nullcontext
from pathlib import Path

import torch

from ..distributed import World, barrier
from ..fileio import atomic_write_with, read_json
from ..rundir import CHECKPOINT, DS_CHECKPOINT
from .checkpoint import CheckpointError
from .config import TrainConfig


class TorchEngine:
    """Plain torch (DDP under a launcher): ``model`` is what the loop calls, ``module`` the bare net."""

    def __init__(self, cfg: TrainConfig, world: World, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.world, self.module, self.optimizer = world, model, optimizer
        if world.distributed:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[world.local_rank] if world.device.type == "cuda" else None)
        self.model = model
        amp = cfg.distributed.amp
        if amp == "auto":
            amp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if world.device.type == "cuda" else "off"
        self.amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.input_dtype = None
        self.scaler = torch.amp.GradScaler(enabled=self.amp_dtype == torch.float16 and world.device.type == "cuda")

    def autocast(self):
        return nullcontext() if self.amp_dtype is None else torch.autocast(self.world.device.type, dtype=self.amp_dtype)

    def to_device(self, x_B: torch.Tensor) -> torch.Tensor:
        x_B = x_B.to(self.world.device, non_blocking=True)
        return x_B if self.input_dtype is None else x_B.to(self.input_dtype)

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def save(self, out: Path, client: dict) -> None:
        if not self.world.is_main:
            return
        state = {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), **client}
        # Serialised in memory first, so a full disk is a plain OSError (ENOSPC) on write.
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_with(out / CHECKPOINT, lambda f: f.write(buf.getbuffer()))

    def load(self, out: Path, check) -> dict | None:
        """Restore ``out``'s checkpoint after ``check(client_state)`` passed; return the client state."""
        path = out / CHECKPOINT
        if not path.exists():
            return None
        try:
            ckpt = torch.load(path, map_location=self.world.device, weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, zipfile.BadZipFile, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path} is not a readable dprune checkpoint ({first}); "
                                  f"delete it or pass --restart") from None
        if not isinstance(ckpt, dict) or not {"model", "optimizer", "epochs_done", "config"} <= set(ckpt):
            raise CheckpointError(f"{path} is not a dprune checkpoint; delete it or pass --restart")
        check(ckpt)
        try:
            self.module.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scaler.load_state_dict(ckpt["scaler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path} does not fit this model: {str(e).splitlines()[0]}; use --restart") from None
        return ckpt


class DeepSpeedEngine(TorchEngine):
    """DeepSpeed around the task's model and torch optimizer (which keeps setting the learning rate)."""

    def __init__(self, cfg: TrainConfig, world: World, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        import deepspeed

        self.world, self.amp_dtype, self.scaler = world, None, None
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=_deepspeed_config(cfg, world))
        self.model, self.module, self.optimizer = engine, engine.module, optimizer
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

    def step(self, loss: torch.Tensor) -> None:
        self.model.backward(loss)
        self.model.step()

    def save(self, out: Path, client: dict) -> None:
        ds_dir = out / DS_CHECKPOINT
        tag = f"epoch{client['epochs_done']}-{client['phase']}"
        self.model.save_checkpoint(str(ds_dir), tag=tag, client_state=client)
        barrier(self.world)
        if self.world.is_main:  # the 'latest' pointer now names the new tag; drop older ones
            for old in ds_dir.glob("epoch*"):
                if old.name != tag:
                    shutil.rmtree(old, ignore_errors=True)

    def load(self, out: Path, check) -> dict | None:
        ds_dir = out / DS_CHECKPOINT
        if not (ds_dir / "latest").exists():
            return None
        path, client = self.model.load_checkpoint(str(ds_dir))
        if path is None:
            raise CheckpointError(f"{ds_dir} holds no loadable DeepSpeed checkpoint; use --restart")
        check(client)
        return client


def _deepspeed_config(cfg: TrainConfig, world: World) -> dict:
    if cfg.distributed.deepspeed_config:
        ds = read_json(Path(cfg.distributed.deepspeed_config), "DeepSpeed config")
        if not isinstance(ds, dict):
            raise ValueError(f"{cfg.distributed.deepspeed_config}: a DeepSpeed config must be a JSON object")
    else:
        bf16 = world.device.type == "cuda" and torch.cuda.is_bf16_supported()
        ds = {"zero_optimization": {"stage": cfg.distributed.zero_stage}, "bf16": {"enabled": bf16}}
    ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
    ds.setdefault("gradient_accumulation_steps", 1)
    ds.pop("train_batch_size", None)
    ds.pop("scheduler", None)  # the trainer sets the learning rate itself
    # A client torch optimizer avoids compiling DeepSpeed's fused Adam (minutes on a CPU).
    ds.setdefault("zero_allow_untested_optimizer", True)
    ds.setdefault("steps_per_print", 10**9)
    return ds


ENGINES = {"ddp": TorchEngine, "deepspeed": DeepSpeedEngine}
