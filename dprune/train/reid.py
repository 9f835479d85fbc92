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
    """Batches of P identities x K images, split across ranks; an epoch's expected length is the image count.

    Every epoch, each identity's images are shuffled and cut into groups of K.  A remainder of
    r < K images becomes a group with probability r / K (completed to K by drawing, seeded and
    without replacement where possible, from the identity's other images; with replacement
    for an identity of fewer than K images, as torchreid does) and is left out of this epoch
    otherwise.  So an identity of n images gives n images per epoch in expectation: pruning
    a fraction of the images saves that fraction of the steps, whether or not it crosses a
    multiple of K, and an image left out of one epoch (a remainder's chance) is drawn in
    others.  (Topping every remainder up to K would cost ceil(n / K) K per identity, so
    pruning a few images per identity would save nothing; dropping every remainder, as
    standard samplers do, would never show some images.)

    Each batch takes one group from each of P identities drawn among those with groups left
    (more groups left, more likely); once fewer than P identities have groups left, the
    batch is filled with fresh groups of other identities.  All ranks build the same
    sequence of batches from (seed, epoch) and rank r takes batches r, r + W, r + 2W, ...;
    the sequence is topped up with batches of fresh groups to a multiple of W, so every rank
    runs the same number of steps.  Samples are repeated by design and some are left out of
    an epoch: the trajectory store's counts record both (a count of 0 is "not observed").

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

    def _groups(self, idx: np.ndarray, rng: np.random.Generator) -> list[list[int]]:
        """An identity's images in groups of K; the remainder r kept with probability r / K, topped up."""
        k = self.k
        idx = rng.permutation(idx)
        n_full = len(idx) // k
        groups = [idx[s : s + k].tolist() for s in range(0, n_full * k, k)]
        rest = idx[n_full * k :]
        if len(rest) and rng.random() < len(rest) / k:
            others = idx[: n_full * k] if n_full else idx
            short = k - len(rest)
            groups.append(rest.tolist() + rng.choice(others, short, replace=short > len(others) or not n_full).tolist())
        return groups

    def _fresh_group(self, c: int, rng: np.random.Generator) -> list[int]:
        """One group of K images of identity ``c`` (to fill a batch): without replacement where possible."""
        idx = self.by_pid[c]
        return rng.choice(idx, self.k, replace=len(idx) < self.k).tolist()

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        queues = [self._groups(idx, rng) for idx in self.by_pid]
        batches = []
        available = [c for c, q in enumerate(queues) if q]
        while available:
            # Identities with more groups left are drawn first, so that groups run out together.
            left = np.array([len(queues[c]) for c in available], float)
            chosen = list(rng.choice(available, min(self.p, len(available)), replace=False, p=left / left.sum()))
            if len(chosen) < self.p:
                # Fewer than P identities have groups left: fill the batch with fresh groups of
                # other identities, so that no image of the epoch is left out.
                others = [c for c in range(len(queues)) if c not in chosen]
                extra = rng.choice(others, self.p - len(chosen), replace=False)
                for c in extra:
                    queues[c].append(self._fresh_group(c, rng))
                chosen += list(extra)
            batch = []
            for c in chosen:
                batch += queues[c].pop()
            batches.append(batch)
            available = [c for c, q in enumerate(queues) if q]
        while len(batches) % self.world_size:  # every rank runs the same number of steps
            batch = []
            for c in rng.choice(len(self.by_pid), self.p, replace=False):
                batch += self._fresh_group(c, rng)
            batches.append(batch)
        return batches

    def __iter__(self):
        return iter(self._batches()[self.rank :: self.world_size])

    def __len__(self) -> int:
        return len(self._batches()) // self.world_size


def step_lr_factor(epochs: int, warmup_epochs: int, t: float) -> float:
    """BoT's schedule at fractional epoch ``t``: linear warm-up from 1%, x0.1 at 1/3 and 7/12 of the run."""
    if t < warmup_epochs:
        return 0.01 + 0.99 * t / warmup_epochs
    milestones = (math.floor(epochs / 3), math.floor(epochs * 7 / 12))
    return 0.1 ** sum(t >= m for m in milestones)
