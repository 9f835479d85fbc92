"""The recorder: (dataset indices, logits) of every batch, from every rank, into the store.

Only rank 0 owns the store and writes; other ranks send their batch and keep nothing.
Duplicated samples (``DistributedSampler`` padding, repeated draws) reach the store as
repeated indices, which it averages by count.
"""
from __future__ import annotations

import torch

from .distributed import World, gather_to_main


class Recorder:
    def __init__(self, store, world: World):
        if world.is_main and store is None:
            raise ValueError("rank 0 needs a store to record into")
        self.store = store
        self.world = world

    def begin_epoch(self, epoch: int) -> None:
        if self.world.is_main:
            self.store.begin_epoch(epoch)

    def record(self, epoch: int, indices_B: torch.Tensor, logits_BC: torch.Tensor) -> None:
        """Collective: every rank must call it for every batch, in the same order."""
        gathered = gather_to_main(self.world, indices_B.detach(), logits_BC.detach().float())
        if gathered is not None:
            idx, z = gathered
            self.store.write(epoch, idx.cpu(), z.cpu())

    def complete_epoch(self, epoch: int) -> None:
        if self.world.is_main:
            self.store.complete_epoch(epoch)
