"""Process-group setup from the launcher's environment, and gathering ragged batches.

torchrun, the deepspeed launcher and the Slurm script all set RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them the run is a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_world(device: str = "auto") -> World:
    """Read rank/world size from the environment and start the process group if needed."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is available")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return World(rank, world_size, local_rank, dev)


def close_world(world: World) -> None:
    # gloo ranks sometimes abort at interpreter exit unless the group is destroyed first.
    if world.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def world_of_process_group() -> World:
    """The :class:`World` of an already initialised ``torch.distributed`` group (or one process)."""
    if dist.is_available() and dist.is_initialized():
        rank, size = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", 0))
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        return World(rank, size, local, dev)
    return World(0, 1, 0, torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
                 else torch.device("cpu"))


def transport_device(world: World) -> torch.device:
    """Where collectives need their tensors: the GPU for NCCL, the CPU for gloo."""
    if world.distributed and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_to_main(world: World, *tensors: torch.Tensor) -> list[torch.Tensor] | None:
    """Concatenate each tensor's rows from all ranks on rank 0 (other ranks get None).

    Batches may differ in length across ranks (the last batch), so lengths are exchanged
    first and rows padded to the longest.  Each rank holds at most world_size batches.
    Tensors travel in their own dtype, nothing upcast; bfloat16 travels as the same bits
    viewed as float16 (gloo has no bfloat16, and a gather does no arithmetic on them).
    """
    if not world.distributed:
        return list(tensors)
    n = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    sizes = [torch.zeros_like(n) for _ in range(world.world_size)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)
    out = []
    for t in tensors:
        bits = t.dtype == torch.bfloat16
        wire = t.view(torch.float16) if bits else t
        padded = torch.zeros((longest,) + tuple(wire.shape[1:]), dtype=wire.dtype, device=wire.device)
        padded[: wire.shape[0]] = wire
        parts = [torch.empty_like(padded) for _ in range(world.world_size)] if world.is_main else None
        dist.gather(padded, parts, dst=0)
        if world.is_main:
            joined = torch.cat([p[:s] for p, s in zip(parts, sizes)])
            out.append(joined.view(t.dtype) if bits else joined)
    return out if world.is_main else None


def broadcast_object(world: World, obj):
    """``obj`` of rank 0, on every rank."""
    if not world.distributed:
        return obj
    box = [obj if world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(world: World, obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not world.distributed:
        return [obj]
    out = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out
