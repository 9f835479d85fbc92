"""Fused trajectory statistics: one Triton kernel computes every field of :class:`~.common.FusedStats`.

Legend: E epochs, N samples, C classes, BN samples per program, BC classes per block.

The torch reference is :func:`dprune.scoring.stats.compute_stats`; :func:`fused_stats` returns
the same statistics (fields, dtypes, NaN placement, -1
soft argmax for unobserved samples), computed in float32 whatever the input dtype.

Each program owns BN samples and walks their epochs.  Two layouts, chosen by
:func:`launch_config`:

* **one class block** (C <= 4096): a sample-epoch row fits in registers, so each epoch's row
  is read once and everything is done with it: log-softmax, the per-epoch statistics, the
  TDDS divergence against the previous observed epoch's log-probabilities (kept in
  registers), and the running sums of logits and of probabilities.
* **several class blocks** (larger C): pass 1 sweeps each epoch's class blocks with an online
  softmax (running max and sum of exp; for EL2N, the sums of exp and of exp^2 over the classes
  other than the label; first argmax, first NaN, the label's and the best other logit)
  and stores the epoch's log-sum-exp in a small [E, N] scratch.  Pass 2 sweeps class blocks
  in the outer loop and epochs in the inner one, so the running sums of logits and of
  probabilities and the previous epoch's log-probabilities are only ever one block wide:
  the mean of per-epoch probabilities that ``entropy_prob`` needs is complete per class
  block, and the entropy of the mean logits uses the online (max, sum exp, sum exp * z)
  triple across blocks.  The price is a second read of the logits instead of an [N, C]
  accumulator in global memory (which would cost 8 bytes per class per epoch, more than
  re-reading fp16 or fp32 logits).

Memory traffic per sample, B = bytes per logit:

* one block:  E*C*B (logits) + 4E (counts) + 8 (label) read; 20E (five [E, N] fp32 outputs,
  plus 4E to zero the TDDS output) + 37 (per-sample outputs) written.  For fp16 ReID
  trajectories (C ~ 1000) that is within 1% of reading the logits once.
* several blocks: 2*E*C*B + 8E + 8 read, plus 4E written and read for the log-sum-exp
  scratch and 8E per class block to accumulate the TDDS divergence (0.2% of the logit
  traffic with 2048-class blocks); same outputs.

NaN and Inf follow the reference: maxima ignore NaN and NaN is carried through the sums
(``exp(NaN) = NaN``), so an undefined softmax gives NaN exactly where ``torch.log_softmax``
does; argmax follows ``torch.argmax`` (the first NaN, else the first maximum); the logit
margin is NaN when another class is NaN, as ``torch.max`` propagates it.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

import triton
import triton.language as tl

from .common import FusedStats, check_stats_inputs

# Above this many classes a row no longer fits in registers and the two-pass layout is used.
MAX_SINGLE_BLOCK_C = 4096
MULTI_BLOCK_C = 2048
# Elements per program tile: a GPU keeps four fp32 tiles in registers; the interpreter runs
# one numpy op per tile, so it wants few, large programs.
GPU_TILE = 4096
INTERPRETER_TILE = 1 << 16
_BIG_INDEX: tl.constexpr = tl.constexpr(2147483647)  # 'no index yet' in min-reductions


class LaunchConfig(NamedTuple):
    """Block sizes of one launch: ``block_n`` samples per program, ``block_c`` classes per block."""

    block_n: int
    block_c: int
    single_block: bool
    num_warps: int


def launch_config(n_samples: int, n_classes: int, *, interpreter: bool, block_c: int | None = None) -> LaunchConfig:
    """Block sizes and warps for ``n_classes`` classes (the only place they are chosen).

    ``block_c`` forces a class block size (a power of two); tests use it to run the
    several-block layout on small C.
    """
    if block_c is None:
        c2 = triton.next_power_of_2(n_classes)
        block_c = c2 if c2 <= MAX_SINGLE_BLOCK_C else MULTI_BLOCK_C
    elif block_c < 1 or block_c & (block_c - 1):
        raise ValueError(f"block_c must be a power of two, got {block_c}")
    single = n_classes <= block_c
    tile = INTERPRETER_TILE if interpreter else GPU_TILE
    block_n = max(1, tile // block_c)
    block_n = min(block_n, triton.next_power_of_2(max(1, n_samples)))
    num_warps = 8 if block_n * block_c >= 4096 else 4
    return LaunchConfig(block_n, block_c, single, num_warps)


@triton.jit
def _row_block_update(z, cols, cmask, y, m, s, so, qo, amax_i, nan_i, mo, others_nan, z_y, nonfin):
    """Fold one class block of one epoch's rows into the online per-epoch state.

    ``z`` [BN, BC] fp32 with padded classes already set to -inf.
    """
    isnan = z != z
    zc = tl.where(isnan, float("-inf"), z)
    bm = tl.max(zc, 1)
    m_new = tl.maximum(m, bm)
    alpha = tl.where(m == float("-inf"), 0.0, tl.exp(m - m_new))
    # exp(-inf - m) is 0 but -inf - (-inf) is NaN: keep -inf lanes (padding) out explicitly.
    ex = tl.where(z == float("-inf"), 0.0, tl.exp(z - m_new[:, None]))
    is_y = cols[None, :] == y[:, None]
    ex_o = tl.where(is_y, 0.0, ex)
    s = s * alpha + tl.sum(ex, 1)
    so = so * alpha + tl.sum(ex_o, 1)
    qo = qo * alpha * alpha + tl.sum(ex_o * ex_o, 1)
    first_max = tl.min(tl.where(zc == bm[:, None], cols[None, :], _BIG_INDEX), 1)
    # Strictly greater: on a tie the earlier block keeps the index, as torch.argmax does.
    amax_i = tl.where(bm > m, first_max, amax_i)
    nan_i = tl.minimum(nan_i, tl.min(tl.where(isnan, cols[None, :], _BIG_INDEX), 1))
    mo = tl.maximum(mo, tl.max(tl.where(is_y, float("-inf"), zc), 1))
    others_nan = others_nan | (tl.max(tl.where(isnan & ~is_y, 1, 0), 1) > 0)
    z_y += tl.sum(tl.where(is_y, z, 0.0), 1)
    bad = (isnan | (tl.abs(z) == float("inf"))) & cmask[None, :]
    nonfin = nonfin | (tl.max(tl.where(bad, 1, 0), 1) > 0)
    return m_new, s, so, qo, amax_i, nan_i, mo, others_nan, z_y, nonfin


@triton.jit
def _row_finish(m, s, so, qo, amax_i, nan_i, mo, others_nan, z_y, y, C):
    """Per-epoch statistics of a row from its online state: (lse, logp_y, correct, margin, el2n).

    ``so`` and ``qo`` are the sums of exp(z - m) and of its square over the classes other
    than the label, so EL2N = sqrt(sum_{k!=y} p_k^2 + (sum_{k!=y} p_k)^2) never forms the
    cancelling 1 - p_y.
    """
    lse = m + tl.log(s)
    logp_y = z_y - lse
    argmax = tl.where(nan_i < _BIG_INDEX, nan_i, amax_i)
    correct = tl.where(argmax == y, 1.0, 0.0)
    margin = tl.where(others_nan, float("nan"), z_y - mo)
    p_o = so / s
    # With one class there is no other class: the reference's sum over none is 0 whatever z.
    el2n = tl.where(C == 1, 0.0, tl.sqrt(qo / (s * s) + p_o * p_o))
    return lse, logp_y, correct, margin, el2n


@triton.jit
def _prob_block(z, lse, cmask, obs, prev_logp, z_sum, p_sum):
    """Probabilities of one class block of one epoch; fold them into the running sums.

    ``z`` [BN, BC] fp32 with padded classes loaded as 0.  Returns the block's share of the
    TDDS divergence [BN], the updated previous-observed log-probabilities and the sums.
    """
    logp = z - lse[:, None]
    p = tl.where(cmask[None, :], tl.exp(logp), 0.0)
    valid = obs[:, None] & cmask[None, :]
    part = tl.sum(tl.where(valid, tl.abs(p * (logp - prev_logp)), 0.0), 1)
    prev_logp = tl.where(obs[:, None], logp, prev_logp)
    z_sum += tl.where(valid, z, 0.0)
    p_sum += tl.where(valid, p, 0.0)
    return part, prev_logp, z_sum, p_sum


@triton.jit
def _mean_block_update(z_sum, p_sum, denom, cols, cmask, y, m, s, t, top1, top2, top_i, zy, h_prob):
    """Fold one class block of the per-sample sums into the soft-label state.

    Online over blocks: max ``m``, ``s`` = sum exp(z - m), ``t`` = sum exp(z - m) (z - m)
    (so H = log s - t / s without cancellation), the two largest mean logits and the index
    of the first largest, the label's mean logit, and the (exact, per-class) entropy of the
    mean probabilities.
    """
    zm = tl.where(cmask[None, :], z_sum / denom[:, None], float("-inf"))
    zc = tl.where(zm != zm, float("-inf"), zm)
    bm = tl.max(zc, 1)
    m_new = tl.maximum(m, bm)
    first = m == float("-inf")
    alpha = tl.where(first, 0.0, tl.exp(m - m_new))
    shift = tl.where(first, 0.0, m_new - m)
    ex = tl.where(zm == float("-inf"), 0.0, tl.exp(zm - m_new[:, None]))
    dz = tl.where(zm == float("-inf"), 0.0, zm - m_new[:, None])
    t = tl.where(first, 0.0, alpha * (t - shift * s)) + tl.sum(ex * dz, 1)
    s = s * alpha + tl.sum(ex, 1)
    b_i = tl.min(tl.where(zc == bm[:, None], cols[None, :], _BIG_INDEX), 1)
    b2 = tl.max(tl.where(cols[None, :] == b_i[:, None], float("-inf"), zc), 1)
    gt = bm > top1
    top2 = tl.where(gt, tl.maximum(top1, b2), tl.maximum(top2, bm))
    top1 = tl.where(gt, bm, top1)
    top_i = tl.where(gt, b_i, top_i)
    zy += tl.sum(tl.where(cols[None, :] == y[:, None], zm, 0.0), 1)
    pa = p_sum / denom[:, None]
    pos = (pa > 0.0) & cmask[None, :]
    h_prob -= tl.sum(tl.where(pos, pa * tl.log(tl.where(pos, pa, 1.0)), 0.0), 1)
    return m_new, s, t, top1, top2, top_i, zy, h_prob


@triton.jit
def _store_p_avg(p_avg_ptr, p_sum, denom, n_obs, rows, rmask, cols, cmask, C):
    """One class block of the mean probabilities; NaN rows for unobserved samples."""
    pa = tl.where((n_obs > 0)[:, None], p_sum / denom[:, None], float("nan"))
    tl.store(p_avg_ptr + rows[:, None] * C + cols[None, :], pa, mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _store_p_soft(p_soft_ptr, z_mean, lse2, n_obs, rows, rmask, cols, cmask, C):
    """One class block of the soft label exp(mean logit - its log-sum-exp); NaN rows for
    unobserved samples.  NaN or +Inf in a row's mean logits make ``lse2`` NaN, hence the whole
    row, as the reference's log_softmax does; a -Inf mean logit gets probability 0."""
    p = tl.where((n_obs > 0)[:, None], tl.exp(z_mean - lse2[:, None]), float("nan"))
    tl.store(p_soft_ptr + rows[:, None] * C + cols[None, :], p, mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _fused_stats_kernel(
    z_ptr,  # [E, N, C] logits, fp16 / bf16 / fp32, contiguous
    cnt_ptr,  # [E, N] int32 observations per epoch (0 = unobserved)
    y_ptr,  # [N] int64 labels
    lse_ptr,  # [E, N] fp32 scratch: per-epoch log-sum-exp (several-block layout only)
    n_obs_ptr,  # [N] int64 observed epochs
    nonfinite_ptr,  # [N] int8 an observed logit is NaN or +-Inf
    entropy_ptr,  # [N] fp32
    entropy_prob_ptr,  # [N] fp32
    p_max_ptr,  # [N] fp32
    p_second_ptr,  # [N] fp32
    soft_argmax_ptr,  # [N] int64
    p_label_ptr,  # [N] fp32
    logp_label_ptr,  # [E, N] fp32
    correct_ptr,  # [E, N] fp32
    margin_ptr,  # [E, N] fp32
    el2n_ptr,  # [E, N] fp32
    tdds_ptr,  # [E, N] fp32, zero-initialised (accumulated over class blocks)
    p_avg_ptr,  # [N, C] fp32 mean probabilities (written when WITH_P_AVG)
    p_soft_ptr,  # [N, C] fp32 soft labels (written when WITH_P_SOFT; the mean logits in between)
    E,
    N,
    C,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr,
    WITH_P_AVG: tl.constexpr,
    WITH_P_SOFT: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    rmask = rows < N
    y = tl.load(y_ptr + rows, mask=rmask, other=0).to(tl.int32)
    lane = tl.arange(0, BLOCK_C)
    nan = float("nan")
    n_obs = tl.zeros([BLOCK_N], tl.int32)
    nonfin = tl.zeros([BLOCK_N], tl.int1)

    if SINGLE_BLOCK:
        cmask = lane < C
        cols = lane
        prev_logp = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
        z_sum = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
        p_sum = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
        has_prev = tl.zeros([BLOCK_N], tl.int1)
        for e in range(E):
            er = tl.cast(e, tl.int64) * N + rows
            obs = tl.load(cnt_ptr + er, mask=rmask, other=0) > 0
            # Rows past N load zeros (not -inf) so the interpreter sees no -inf - -inf.
            z = tl.load(z_ptr + er[:, None] * C + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
            z = z.to(tl.float32)
            zi = tl.where(cmask[None, :], z, float("-inf"))
            m, s, so, qo, amax_i, nan_i, mo, others_nan, z_y, row_bad = _row_block_update(
                zi, cols, cmask, y,
                tl.full([BLOCK_N], float("-inf"), tl.float32), tl.zeros([BLOCK_N], tl.float32),
                tl.zeros([BLOCK_N], tl.float32), tl.zeros([BLOCK_N], tl.float32), tl.zeros([BLOCK_N], tl.int32),
                tl.full([BLOCK_N], _BIG_INDEX, tl.int32), tl.full([BLOCK_N], float("-inf"), tl.float32),
                tl.zeros([BLOCK_N], tl.int1), tl.zeros([BLOCK_N], tl.float32), tl.zeros([BLOCK_N], tl.int1),
            )
            lse, logp_y, correct, margin, el2n = _row_finish(m, s, so, qo, amax_i, nan_i, mo, others_nan, z_y, y, C)
            part, prev_logp, z_sum, p_sum = _prob_block(z, lse, cmask, obs, prev_logp, z_sum, p_sum)
            tl.store(logp_label_ptr + er, tl.where(obs, logp_y, nan), mask=rmask)
            tl.store(correct_ptr + er, tl.where(obs, correct, nan), mask=rmask)
            tl.store(margin_ptr + er, tl.where(obs, margin, nan), mask=rmask)
            tl.store(el2n_ptr + er, tl.where(obs, el2n, nan), mask=rmask)
            tl.store(tdds_ptr + er, tl.where(obs & has_prev, part, nan), mask=rmask)
            has_prev = has_prev | obs
            n_obs += obs.to(tl.int32)
            nonfin = nonfin | (obs & row_bad)
        denom = tl.maximum(n_obs, 1).to(tl.float32)
        m2, s2, t2, top1, top2, top_i, zy_mean, h_prob = _mean_block_update(
            z_sum, p_sum, denom, cols, cmask, y,
            tl.full([BLOCK_N], float("-inf"), tl.float32), tl.zeros([BLOCK_N], tl.float32),
            tl.zeros([BLOCK_N], tl.float32), tl.full([BLOCK_N], float("-inf"), tl.float32),
            tl.full([BLOCK_N], float("-inf"), tl.float32), tl.zeros([BLOCK_N], tl.int32),
            tl.zeros([BLOCK_N], tl.float32), tl.zeros([BLOCK_N], tl.float32),
        )
        if WITH_P_AVG:
            _store_p_avg(p_avg_ptr, p_sum, denom, n_obs, rows, rmask, cols, cmask, C)
        if WITH_P_SOFT:
            _store_p_soft(p_soft_ptr, z_sum / denom[:, None], m2 + tl.log(s2), n_obs, rows, rmask, cols, cmask, C)
    else:
        # Pass 1: per-epoch online softmax over class blocks.
        for e in range(E):
            er = tl.cast(e, tl.int64) * N + rows
            obs = tl.load(cnt_ptr + er, mask=rmask, other=0) > 0
            m = tl.full([BLOCK_N], float("-inf"), tl.float32)
            s = tl.zeros([BLOCK_N], tl.float32)
            so = tl.zeros([BLOCK_N], tl.float32)
            qo = tl.zeros([BLOCK_N], tl.float32)
            amax_i = tl.zeros([BLOCK_N], tl.int32)
            nan_i = tl.full([BLOCK_N], _BIG_INDEX, tl.int32)
            mo = tl.full([BLOCK_N], float("-inf"), tl.float32)
            others_nan = tl.zeros([BLOCK_N], tl.int1)
            z_y = tl.zeros([BLOCK_N], tl.float32)
            row_bad = tl.zeros([BLOCK_N], tl.int1)
            for c0 in range(0, C, BLOCK_C):
                cols = c0 + lane
                cmask = cols < C
                z = tl.load(z_ptr + er[:, None] * C + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
                zi = tl.where(cmask[None, :], z.to(tl.float32), float("-inf"))
                m, s, so, qo, amax_i, nan_i, mo, others_nan, z_y, row_bad = _row_block_update(
                    zi, cols, cmask, y, m, s, so, qo, amax_i, nan_i, mo, others_nan, z_y, row_bad
                )
            lse, logp_y, correct, margin, el2n = _row_finish(m, s, so, qo, amax_i, nan_i, mo, others_nan, z_y, y, C)
            tl.store(lse_ptr + er, lse, mask=rmask)
            tl.store(logp_label_ptr + er, tl.where(obs, logp_y, nan), mask=rmask)
            tl.store(correct_ptr + er, tl.where(obs, correct, nan), mask=rmask)
            tl.store(margin_ptr + er, tl.where(obs, margin, nan), mask=rmask)
            tl.store(el2n_ptr + er, tl.where(obs, el2n, nan), mask=rmask)
            n_obs += obs.to(tl.int32)
            nonfin = nonfin | (obs & row_bad)
        denom = tl.maximum(n_obs, 1).to(tl.float32)
        # Pass 2: class blocks outer, epochs inner; every accumulator is one block wide.
        m2 = tl.full([BLOCK_N], float("-inf"), tl.float32)
        s2 = tl.zeros([BLOCK_N], tl.float32)
        t2 = tl.zeros([BLOCK_N], tl.float32)
        top1 = tl.full([BLOCK_N], float("-inf"), tl.float32)
        top2 = tl.full([BLOCK_N], float("-inf"), tl.float32)
        top_i = tl.zeros([BLOCK_N], tl.int32)
        zy_mean = tl.zeros([BLOCK_N], tl.float32)
        h_prob = tl.zeros([BLOCK_N], tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + lane
            cmask = cols < C
            last_block = c0 + BLOCK_C >= C
            prev_logp = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
            z_sum = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
            p_sum = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
            has_prev = tl.zeros([BLOCK_N], tl.int1)
            for e in range(E):
                er = tl.cast(e, tl.int64) * N + rows
                obs = tl.load(cnt_ptr + er, mask=rmask, other=0) > 0
                lse = tl.load(lse_ptr + er, mask=rmask, other=0.0)
                z = tl.load(z_ptr + er[:, None] * C + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
                part, prev_logp, z_sum, p_sum = _prob_block(z.to(tl.float32), lse, cmask, obs, prev_logp, z_sum, p_sum)
                acc = tl.load(tdds_ptr + er, mask=rmask, other=0.0) + part
                acc = tl.where(last_block, tl.where(obs & has_prev, acc, nan), acc)
                tl.store(tdds_ptr + er, acc, mask=rmask)
                has_prev = has_prev | obs
            m2, s2, t2, top1, top2, top_i, zy_mean, h_prob = _mean_block_update(
                z_sum, p_sum, denom, cols, cmask, y, m2, s2, t2, top1, top2, top_i, zy_mean, h_prob
            )
            if WITH_P_AVG:
                _store_p_avg(p_avg_ptr, p_sum, denom, n_obs, rows, rmask, cols, cmask, C)
            if WITH_P_SOFT:  # the block's mean logits, until the log-sum-exp of every block is known
                tl.store(p_soft_ptr + rows[:, None] * C + cols[None, :], z_sum / denom[:, None],
                         mask=rmask[:, None] & cmask[None, :])
        if WITH_P_SOFT:
            lse_mean = m2 + tl.log(s2)
            for c0 in range(0, C, BLOCK_C):
                cols = c0 + lane
                cmask = cols < C
                at = p_soft_ptr + rows[:, None] * C + cols[None, :]
                z_mean = tl.load(at, mask=rmask[:, None] & cmask[None, :], other=0.0)
                _store_p_soft(p_soft_ptr, z_mean, lse_mean, n_obs, rows, rmask, cols, cmask, C)

    lse2 = m2 + tl.log(s2)
    defined = (lse2 == lse2) & (tl.abs(lse2) != float("inf"))
    # As the reference: where the soft label is undefined (NaN or Inf in the mean logits) no
    # p log p term survives its p > 0 mask, so the entropy is 0.  The reference's argmax of an
    # all-NaN soft label is whatever topk returns; 0 here (scores mask such samples).
    entropy = tl.where(defined, tl.log(s2) - t2 / s2, 0.0)
    p_max = tl.exp(top1 - lse2)
    p_second = tl.where(C == 1, 0.0, tl.exp(top2 - lse2))
    p_label = tl.exp(zy_mean - lse2)
    observed = n_obs > 0
    soft_argmax = tl.where(observed, tl.where(defined, top_i, 0), -1).to(tl.int64)
    tl.store(n_obs_ptr + rows, n_obs.to(tl.int64), mask=rmask)
    tl.store(nonfinite_ptr + rows, nonfin.to(tl.int8), mask=rmask)
    tl.store(entropy_ptr + rows, tl.where(observed, entropy, nan), mask=rmask)
    tl.store(entropy_prob_ptr + rows, tl.where(observed, h_prob, nan), mask=rmask)
    tl.store(p_max_ptr + rows, tl.where(observed, p_max, nan), mask=rmask)
    tl.store(p_second_ptr + rows, tl.where(observed, p_second, nan), mask=rmask)
    tl.store(soft_argmax_ptr + rows, soft_argmax, mask=rmask)
    tl.store(p_label_ptr + rows, tl.where(observed, p_label, nan), mask=rmask)


def interpreter_active() -> bool:
    """True when this module's kernel runs in Triton's CPU interpreter (``TRITON_INTERPRET=1``
    was set when the kernel was decorated, i.e. before this module was first imported)."""
    return isinstance(_fused_stats_kernel, triton.runtime.interpreter.InterpretedFunction)


def fused_stats(logits_ENC: torch.Tensor, counts_EN: torch.Tensor, labels_N: torch.Tensor, *, block_c: int | None = None,
                with_p_avg: bool = False, with_p_soft: bool = False) -> FusedStats:
    """Every :class:`~.common.FusedStats` field in one kernel launch.

    Parameters
    ----------
    logits_ENC : tensor [E, N, C], float16 / bfloat16 / float32
        Per-epoch mean logits; rows with a count of 0 are ignored whatever they hold.
    counts_EN : tensor [E, N], integer
        Observations per epoch and sample (0 = not observed).
    labels_N : tensor [N], integer in [0, C)
        Given labels (not range-checked here; an out-of-range label matches no class).
    block_c : int, optional
        Class block size (a power of two), to force the several-block layout in tests.
    with_p_avg : bool
        Also return the mean probabilities [N, C] (``p_avg``); otherwise that field is None.
    with_p_soft : bool
        Also return the soft labels [N, C] (``p_soft``); otherwise that field is None.

    All three tensors must be on one device: a CUDA GPU, or the CPU when Triton's
    interpreter is active.  Returns float32 / int64 / bool tensors on that device, equal to
    :func:`dprune.scoring.stats.compute_stats` up to float32 rounding.
    """
    E, N, C = check_stats_inputs(logits_ENC, counts_EN, labels_N)
    dev = logits_ENC.device
    if counts_EN.device != dev or labels_N.device != dev:
        raise ValueError(f"tensors on different devices: {dev}, {counts_EN.device}, {labels_N.device}")
    interpreter = interpreter_active()
    if dev.type != "cuda" and not interpreter:
        raise ValueError(
            f"fused_stats needs CUDA tensors (got {dev}); on the CPU set TRITON_INTERPRET=1 "
            "before this module (dprune.kernels.fused_stats) is first imported"
        )
    cfg = launch_config(N, C, interpreter=interpreter, block_c=block_c)
    z = logits_ENC.contiguous()
    cnt = counts_EN.to(torch.int32).contiguous()
    y = labels_N.to(torch.int64).contiguous()

    def f32(*shape):
        return torch.empty(shape, dtype=torch.float32, device=dev)

    n_obs = torch.empty(N, dtype=torch.int64, device=dev)
    nonfinite = torch.empty(N, dtype=torch.int8, device=dev)
    entropy, entropy_prob, p_max, p_second, p_label = (f32(N) for _ in range(5))
    soft_argmax = torch.empty(N, dtype=torch.int64, device=dev)
    logp_label, correct, margin, el2n = (f32(E, N) for _ in range(4))
    tdds = torch.zeros(E, N, dtype=torch.float32, device=dev)
    lse = f32(E, N) if not cfg.single_block else f32(1)
    p_avg = f32(N, C) if with_p_avg else f32(1)
    p_soft = f32(N, C) if with_p_soft else f32(1)
    grid = (triton.cdiv(N, cfg.block_n),)
    _fused_stats_kernel[grid](
        z, cnt, y, lse,
        n_obs, nonfinite, entropy, entropy_prob, p_max, p_second, soft_argmax, p_label,
        logp_label, correct, margin, el2n, tdds, p_avg, p_soft,
        E, N, C,
        BLOCK_N=cfg.block_n, BLOCK_C=cfg.block_c, SINGLE_BLOCK=cfg.single_block, WITH_P_AVG=with_p_avg,
        WITH_P_SOFT=with_p_soft, num_warps=cfg.num_warps,
    )
    return FusedStats(
        n_obs=n_obs,
        nonfinite=nonfinite.view(torch.bool),
        entropy=entropy,
        entropy_prob=entropy_prob,
        p_max=p_max,
        p_second=p_second,
        soft_argmax=soft_argmax,
        p_label=p_label,
        logp_label=logp_label,
        correct=correct,
        logit_margin=margin,
        el2n=el2n,
        tdds_div=tdds,
        p_avg=p_avg if with_p_avg else None,
        p_soft=p_soft if with_p_soft else None,
    )
