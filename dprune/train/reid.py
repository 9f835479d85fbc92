"""The ReID training recipe: P x K identity sampling, batch-hard triplet loss, transforms.

Legend: B = P x K batch, D feature width.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2 as T

REID_MEAN, REID_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def reid_transforms(height: int = 256, width: int = 128, *, train: bool):
    """BoT's pipeline: resize, flip, pad + random crop, normalise, random erasing (train).

    The padding is BoT's 10 pixels at 256 x 128, scaled with the height for smaller inputs.
    """
    steps = [T.Resize((height, width), antialias=True)]
    if train:
        pad = max(1, round(10 * height / 256))
        steps += [T.RandomHorizontalFlip(), T.Pad(pad), T.RandomCrop((height, width))]
    steps += [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(REID_MEAN, REID_STD)]
    if train:
        steps.append(T.RandomErasing(p=0.5, value=0))
    return T.Compose(steps)


def batch_hard_triplet_loss(feat_BD: torch.Tensor, pids_B: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Hermans et al. 2017: for each anchor, hardest positive vs hardest negative, Euclidean.

    Anchors without a positive or a negative in the batch are left out.
    """
    dist = torch.cdist(feat_BD.float(), feat_BD.float()).clamp(min=1e-12)
    same = pids_B[:, None] == pids_B[None, :]
    eye = torch.eye(len(pids_B), dtype=torch.bool, device=feat_BD.device)
    pos = same & ~eye
    hardest_pos = torch.where(pos, dist, torch.zeros_like(dist)).max(1).values
    hardest_neg = torch.where(~same, dist, torch.full_like(dist, float("inf"))).min(1).values
    valid = pos.any(1) & (~same).any(1)
    if not valid.any():
        return feat_BD.sum() * 0.0
    return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()


class PKSampler:
    """Batches of P identities x K images, split across ranks.

    Every epoch, each identity's images are shuffled and cut into groups of K (an identity
    with fewer than K images is drawn with replacement; a remainder short of K is skipped);
    each batch takes one group from each of P identities drawn among those with groups left.  All ranks build the same sequence of batches from
    (seed, epoch) and rank r takes batches r, r + W, r + 2W, ...; the sequence is cut to a
    multiple of W, so every rank runs the same number of steps.  Samples are repeated and
    skipped by design: the trajectory store's counts record it.

    Yields lists of dataset positions (use as ``DataLoader(batch_sampler=...)``).
    """

    def __init__(self, labels_N, p: int, k: int, *, world_size: int = 1, rank: int = 0, seed: int = 0):
        labels_N = np.asarray(labels_N)
        if p < 2 or k < 2:
            raise ValueError(f"P x K sampling needs P >= 2 and K >= 2 (triplets), got P={p}, K={k}")
        self.by_pid = [np.flatnonzero(labels_N == c) for c in np.unique(labels_N)]
        if len(self.by_pid) < p:
            raise ValueError(f"P={p} identities per batch but the training set has only {len(self.by_pid)}")
        self.p, self.k, self.world_size, self.rank, self.seed = p, k, world_size, rank, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        queues = []  # per identity: its groups of K positions
        for idx in self.by_pid:
            idx = rng.permutation(idx) if len(idx) >= self.k else rng.choice(idx, self.k, replace=True)
            queues.append([idx[s : s + self.k].tolist() for s in range(0, len(idx) - self.k + 1, self.k)])
        batches = []
        available = [c for c, q in enumerate(queues) if q]
        while len(available) >= self.p:
            batch = []
            for c in rng.choice(available, self.p, replace=False):
                batch += queues[c].pop()
            batches.append(batch)
            available = [c for c in available if queues[c]]
        usable = len(batches) - len(batches) % self.world_size
        return batches[:usable]

    def __iter__(self):
        return iter(self._batches()[self.rank :: self.world_size])

    def __len__(self) -> int:
        return len(self._batches()) // self.world_size


def step_lr_lambda(epochs: int, steps_per_epoch: int, warmup_epochs: int):
    """BoT's schedule scaled to ``epochs``: linear warm-up from 1%, x0.1 at 1/3 and 7/12 of the run."""
    warm = warmup_epochs * steps_per_epoch
    milestones = [math.floor(epochs / 3) * steps_per_epoch, math.floor(epochs * 7 / 12) * steps_per_epoch]

    def f(step: int) -> float:
        if step < warm:
            return 0.01 + 0.99 * step / warm
        return 0.1 ** sum(step >= m for m in milestones)

    return f
