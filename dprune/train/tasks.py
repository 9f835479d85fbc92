"""Tasks: what differs between classification and ReID, behind one interface the loop calls.

Legend: B batch, C classes (the model's, threshold samples' fake class included), D feature width.

A task builds the training set and the evaluation data, the model with its optimizer and
learning-rate schedule, the training sampler, the loss, the logits a recording pass stores,
and the test metric.  The loop (:mod:`.loop`) never asks which task runs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from ..data import IndexedDataset, build_dataset
from ..distributed import World
from ..models import build_model
from .config import TrainConfig


def cosine_lr_factor(cfg: TrainConfig, t: float, steps_in_epoch: int) -> float:
    """Classification schedule at fractional epoch ``t``: linear warm-up, then cosine to 0 at ``epochs``.

    A step is at ``t = epoch + step / steps_in_epoch``; without pruning this is the usual
    per-step schedule (step k of S per epoch: warm-up (k + 1) / (W S), then cosine).
    """
    W, E = cfg.optim.warmup_epochs, cfg.epochs
    if t < W:
        return (t + 1 / steps_in_epoch) / W
    return 0.5 * (1 + math.cos(math.pi * (t - W) / max(E - W, 1e-9)))


class ClassificationTask:
    """Image classification: SGD (Nesterov) with a cosine schedule, cross-entropy, top-1 accuracy."""

    metric_name = "top-1"

    def __init__(self, cfg: TrainConfig, world: World):
        self.cfg, self.world = cfg, world

    def build_data(self):
        """The training set (labels as the dataset gives them) and the evaluation data."""
        cfg = self.cfg
        # The data are the same whatever the training seed (digits: its fixed seed-0 split).
        d = cfg.data
        train, test = build_dataset(d.dataset, d.data_root, image_size=d.image_size, augment=d.augment)
        self.eval_transform = test.transform
        self.test_loader = DataLoader(IndexedDataset(test), batch_size=max(256, cfg.data.batch_size), shuffle=False,
                                      num_workers=cfg.data.num_workers, pin_memory=self.world.device.type == "cuda")
        return train

    def build_model(self, train_set, num_classes: int):
        """The model (on the device), its torch optimizer, and the schedule ``factor(t, steps_in_epoch)``."""
        cfg = self.cfg
        sample = train_set[0][0]
        model = build_model(cfg.model.name, num_classes, train_set.in_channels, cfg.model.weights,
                            image_size=int(max(sample.shape[-2:]))).to(self.world.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                    weight_decay=cfg.optim.weight_decay, nesterov=True)
        return model, optimizer, lambda t, steps: cosine_lr_factor(cfg, t, steps)

    def sampler(self, train_ds):
        w = self.world
        return DistributedSampler(train_ds, num_replicas=w.world_size, rank=w.rank, shuffle=True, seed=self.cfg.seed,
                                  drop_last=False)

    def loader(self, train_ds, sampler, **loader_kw) -> DataLoader:
        return DataLoader(train_ds, batch_size=self.cfg.data.batch_size, sampler=sampler, drop_last=False, **loader_kw)

    def loss(self, out, y_B: torch.Tensor):
        """``(loss, logits_BC)`` of a training forward pass ``out``."""
        return F.cross_entropy(out.float(), y_B, label_smoothing=self.cfg.optim.label_smoothing), out

    def logits(self, module, x_B: torch.Tensor) -> torch.Tensor:
        """What a recording pass stores for the batch ``x_B``."""
        return module(x_B)

    @torch.no_grad()
    def evaluate(self, engine, real_classes: int) -> dict:
        correct = total = 0
        for x_B, y_B, _ in self.test_loader:
            with engine.autocast():
                # Threshold samples add a fake class: predictions are over the real ones.
                pred = engine.module(engine.to_device(x_B))[:, :real_classes].argmax(1).cpu()
            correct += int((pred == y_B).sum())
            total += len(y_B)
        acc = correct / max(1, total)
        return {"test_metric": acc, "metric_name": self.metric_name, "test_acc": acc}


class _CastInput(torch.nn.Module):
    """Feeds a bf16/fp16 module (DeepSpeed) the dtype it expects."""

    def __init__(self, module: torch.nn.Module, dtype):
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, x):
        return self.module(x if self.dtype is None else x.to(self.dtype))


class ReIDTask(ClassificationTask):
    """Person/vehicle ReID, BoT recipe: BNNeck model, Adam with warm-up and steps, ID + batch-hard
    triplet loss, P x K sampling, mAP/CMC on query/gallery (headline (mAP + Rank-1) / 2)."""

    metric_name = "(mAP+R1)/2"

    def build_data(self):
        from ..data.reid import ReIDImageDataset, build_reid_dataset
        from .reid import reid_transforms

        cfg = self.cfg
        self.reid = build_reid_dataset(cfg.data.dataset, cfg.data.data_root)
        size = (cfg.reid.reid_height, cfg.reid.reid_width)
        train = ReIDImageDataset(self.reid.train, self.reid.root, reid_transforms(*size, train=True))
        self.eval_transform = reid_transforms(*size, train=False)
        loader_kw = dict(num_workers=cfg.data.num_workers, pin_memory=self.world.device.type == "cuda")
        self.query_loader, self.gallery_loader = (
            DataLoader(ReIDImageDataset(records, self.reid.root, self.eval_transform), batch_size=128, shuffle=False,
                       **loader_kw) for records in (self.reid.query, self.reid.gallery))
        return train

    def build_model(self, train_set, num_classes: int):
        from ..models.reid import BoTReID
        from .reid import step_lr_factor

        cfg = self.cfg
        model = BoTReID(num_classes, cfg.model.name, weights=cfg.model.weights).to(self.world.device)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr,
                                     weight_decay=cfg.optim.weight_decay)
        warm = cfg.optim.warmup_epochs or max(1, cfg.epochs // 12)
        return model, optimizer, lambda t, steps: step_lr_factor(cfg.epochs, warm, t)

    def sampler(self, train_ds):
        from .reid import PKSampler

        cfg, w = self.cfg, self.world
        k = cfg.reid.pk_k
        return PKSampler(train_ds.labels, cfg.data.batch_size // k, k, world_size=w.world_size, rank=w.rank,
                         seed=cfg.seed)

    def loader(self, train_ds, sampler, **loader_kw) -> DataLoader:
        return DataLoader(train_ds, batch_sampler=sampler, **loader_kw)

    def loss(self, out, y_B: torch.Tensor):
        from .reid import batch_hard_triplet_loss

        ce = F.cross_entropy(out.logits.float(), y_B, label_smoothing=self.cfg.optim.label_smoothing)
        return ce + batch_hard_triplet_loss(out.feat, y_B, self.cfg.reid.triplet_margin), out.logits

    def logits(self, module, x_B: torch.Tensor) -> torch.Tensor:
        return module.logits(x_B)

    @torch.no_grad()
    def evaluate(self, engine, real_classes: int) -> dict:
        from ..evaluate.reid import evaluate_reid, extract_features

        device = self.world.device
        net = _CastInput(engine.module, engine.input_dtype)
        with engine.autocast():
            q = extract_features(net, self.query_loader, device)
            g = extract_features(net, self.gallery_loader, device)
        r = evaluate_reid(q.features, g.features, q.pids, g.pids, q.camids, g.camids, device=device)
        return {"test_metric": r["mAP_rank1_mean"], "metric_name": self.metric_name, "mAP": r["mAP"],
                "rank1": r["rank1"], "rank5": r["rank5"], "rank10": r["rank10"], "mINP": r["mINP"]}


TASK_CLASSES = {"classification": ClassificationTask, "reid": ReIDTask}
