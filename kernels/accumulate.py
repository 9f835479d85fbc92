"""Scatter-add of a batch of logits into an epoch accumulator, with observation counts.

Legend: B observations in the batch, N samples, C classes.

``acc[idx[b]] += z[b]`` and ``counts[idx[b]] += 1`` for every observation ``b``; indices may
repeat within a batch (``DistributedSampler`` padding, P x K sampling), which is why the
adds are atomic.  The torch reference is ``acc.index_add_(0, idx, z.float())`` (and the same
for the counts), which :class:`dprune.summary_store.SummaryStore` uses on the CPU.

Memory traffic per observation: B*C*bytes(z) read, C fp32 read-modify-writes (atomics) on
the accumulator row, one int32 atomic on its count.  Order of the fp32 adds is not fixed,
so a sample observed several times in one epoch gets its sum rounded in any order.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import is_interpreted

# Elements per program: a GPU keeps one tile of logits in registers; the interpreter runs
# one numpy op per tile, so it wants few, large programs.
GPU_TILE = 4096
INTERPRETER_TILE = 1 << 16
MAX_BLOCK_C = 4096


class LaunchConfig(NamedTuple):
    """Block sizes of one launch: ``block_b`` observations by ``block_c`` classes per program."""

    block_b: int
    block_c: int
    num_warps: int


def launch_config(n_obs: int, n_classes: int, *, interpreter: bool) -> LaunchConfig:
    """Block sizes and warps for a batch of ``n_obs`` rows of ``n_classes`` (the only place they are chosen)."""
    block_c = min(triton.next_power_of_2(n_classes), MAX_BLOCK_C)
    tile = INTERPRETER_TILE if interpreter else GPU_TILE
    block_b = min(max(1, tile // block_c), triton.next_power_of_2(max(1, n_obs)))
    num_warps = 8 if block_b * block_c >= 4096 else 4
    return LaunchConfig(block_b, block_c, num_warps)


@triton.jit
def _scatter_add_kernel(
    acc_ptr,  # [N, C] fp32 epoch accumulator: sum of the epoch's observations
    counts_ptr,  # [N] int32 observations so far this epoch
    idx_ptr,  # [B] int64 sample index of each observation
    z_ptr,  # [B, C] logits, fp16 / bf16 / fp32, contiguous
    B,
    C,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1).to(tl.int64)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    rmask = rows < B
    mask = rmask[:, None] & (cols < C)[None, :]
    idx = tl.load(idx_ptr + rows, mask=rmask, other=0)
    z = tl.load(z_ptr + rows[:, None] * C + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.atomic_add(acc_ptr + idx[:, None] * C + cols[None, :], z, mask=mask)
    # One program per row block counts each observation once.
    if pid_c == 0:
        tl.atomic_add(counts_ptr + idx, tl.full([BLOCK_B], 1, tl.int32), mask=rmask)


def scatter_add_rows(acc_NC: torch.Tensor, counts_N: torch.Tensor, indices_B: torch.Tensor, logits_BC: torch.Tensor) -> None:
    """Add each row of ``logits_BC`` to row ``indices_B[b]`` of ``acc_NC``; count it in ``counts_N``.

    Parameters
    ----------
    acc_NC : tensor [N, C], float32, contiguous; updated in place
    counts_N : tensor [N], int32; updated in place
    indices_B : tensor [B], integer in [0, N) (not range-checked here)
    logits_BC : tensor [B, C], float16 / bfloat16 / float32

    All on one CUDA device (or on the CPU under ``TRITON_INTERPRET=1``).
    """
    N, C = acc_NC.shape
    B = indices_B.shape[0]
    if tuple(logits_BC.shape) != (B, C) or tuple(counts_N.shape) != (N,):
        raise ValueError(
            f"expected logits [B, C] = [{B}, {C}] and counts [N] = [{N}], "
            f"got {tuple(logits_BC.shape)} and {tuple(counts_N.shape)}"
        )
    if acc_NC.dtype != torch.float32 or counts_N.dtype != torch.int32 or not acc_NC.is_contiguous():
        raise ValueError(f"expected a contiguous float32 accumulator and int32 counts, got {acc_NC.dtype}, {counts_N.dtype}")
    devices = {t.device for t in (acc_NC, counts_N, indices_B, logits_BC)}
    if len(devices) != 1:
        raise ValueError(f"tensors on different devices: {sorted(map(str, devices))}")
    interpreter = is_interpreted(_scatter_add_kernel)
    if acc_NC.device.type != "cuda" and not interpreter:
        raise ValueError(
            f"scatter_add_rows needs CUDA tensors (got {acc_NC.device}); on the CPU set TRITON_INTERPRET=1 "
            "before dprune.kernels is imported"
        )
    if B == 0:
        return
    cfg = launch_config(B, C, interpreter=interpreter)
    grid = (triton.cdiv(B, cfg.block_b), triton.cdiv(C, cfg.block_c))
    _scatter_add_kernel[grid](
        acc_NC, counts_N, indices_B.to(torch.int64).contiguous(), logits_BC.contiguous(), B, C,
        BLOCK_B=cfg.block_b, BLOCK_C=cfg.block_c, num_warps=cfg.num_warps,
    )
