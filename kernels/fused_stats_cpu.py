"""Fused trajectory statistics on the CPU: one numba kernel computes every field of :class:`~.common.FusedStats`.

Legend: E epochs, N samples, C classes; n one sample, e one epoch, c one class, y its label.

The torch reference is :func:`dprune.scoring.stats.compute_stats`; :func:`fused_stats_cpu`
returns the same statistics (fields, dtypes, NaN placement,
-1 soft argmax for unobserved samples), computed in float32 whatever the input dtype.  It is
the CPU twin of the Triton kernel :mod:`dprune.kernels.fused_stats`, with the same maths.

Threads (``prange``, dynamically scheduled) take blocks of samples.  For each sample the
kernel walks its observed epochs and reads each epoch's row of C logits from memory once,
converting it to float32 into a scratch row that every later pass reads from L1:

1. convert (fp16: LLVM's half-to-float extension, one ``vcvtph2ps`` per 8 logits with F16C;
   bf16: a 16-bit shift; fp32: as is), add into the sample's sum of observed logits, then the
   max over the classes other than the label;
2. ``exp(z - max)``; its sum and sum of squares over the other classes give the log-sum-exp,
   log p_y, and EL2N = sqrt(sum_{k!=y} p_k^2 + (sum_{k!=y} p_k)^2) without the cancelling
   1 - p_y;
3. the probabilities, added into the sample's sum of probabilities, and the TDDS divergence
   against the previous observed epoch's log-probabilities (a scratch row, then replaced).

After the last epoch the soft label's statistics come from the two sums, as the reference
computes them from the mean logits and the mean probabilities.

Memory traffic per sample, B = bytes per logit: E*C*B (logits) + 4E (counts) + 8 (label)
read, 20E + 37 written: one read of the trajectory.  Scratch per thread: five float32 rows of C
(20 KB for C = 1041, in L1).  Unobserved rows are never read.  Measured on one core of a Xeon
(Sapphire Rapids, AVX2 code), E = 12, C = 1041, fp16: ~1.5 ns per logit, of which exp ~0.5,
probabilities and TDDS ~0.3, the max ~0.2, the per-sample soft label ~0.2.  fp16 goes through
LLVM's exact half-to-float conversion rather than a 65536-entry float32 table: the table's
gathers kept the conversion loop from vectorising and cost ~0.5 ns per logit more (an
arithmetic bit conversion, ~0.3 ns more); fp16 then runs as fast as bf16.

NaN and Inf follow the reference.  A row holding NaN or +Inf (or only -Inf) has an undefined
softmax: its sum of exponentials is NaN and so is everything derived from it, as with
``torch.log_softmax``; such rows take a slow path for argmax (``torch.argmax``: the first NaN,
else the first maximum) and the margin (NaN when any class is NaN, as ``torch.max``
propagates it).  A NaN row's max is never used, so the max may ignore NaN (``maxNum``, which
vectorises without fast-math).  -Inf logits give p = 0, log p = -Inf and the TDDS term 0 * -Inf = NaN, as the
reference computes it.  The non-finite flag is read off the sum of observed logits (a NaN or
+-Inf in an observed row leaves it non-finite for good) and confirmed row by row only for the
samples it flags.  Subnormal probabilities (exp below -87.3) are returned as 0.

Floating point: no ``fastmath`` except ``reassoc`` on the two helpers that only add up terms
computed elsewhere (:func:`_sum`, :func:`_sum_and_squares`): reordering a sum of terms of one
sign changes its rounding, never whether it is NaN or Inf.  ``nnan``/``ninf`` would let the
compiler drop the NaN/Inf propagation the contract specifies, and ``reassoc`` elsewhere allows
folds such as ``(a + C) - C -> a`` that the exp's rounding step relies on not happening.
exp and log are Cephes' float32 polynomials (~1 ulp) with explicit fused multiply-adds,
vectorisable where ``math.exp`` is a scalar libm call.  So results differ from the reference
by float32 rounding only (summation order, exp/log: ~1e-6 relative).

The LLVM one-liners this needs (bit casts, the fp16 conversion, FMA, maxNum) are in
:mod:`.cpu_intrinsics`, which says why they exist and which measurement justifies them.

Compilation: ``cache=True``; the first call in a fresh environment compiles ~9-13 s per input
width (uint16 for fp16/bf16, uint32 for fp32); later processes load it from the cache (~0.6 s).  The
kernel releases the GIL; ``threads=1`` runs a serial entry point that never enters numba's
thread pool.
"""
from __future__ import annotations

import numba
import numpy as np
import torch

from .common import FusedStats, check_stats_inputs
from .cpu_intrinsics import as_f32, bits, fma, half_to_f32, maxnum, u16_at, u32_at

# Samples per parallel work item: ~0.5 ms of work, so that the threads share out the rest of
# a chunk well when a core is busy with something else (dynamic scheduling).
BLOCK_SAMPLES = 16
# Input encodings: the logits reach the kernel as raw bits (numba has no float16).
_FP16, _BF16, _FP32 = 0, 1, 2

_F32 = np.float32
_ZERO, _ONE, _HALF = _F32(0.0), _F32(1.0), _F32(0.5)
_NAN, _NEG_INF = _F32(np.nan), _F32(-np.inf)

# exp: x = k ln2 + r with |r| <= ln2 / 2; e^r by a degree-6 polynomial (Cephes expf).
_LOG2E = _F32(1.44269504088896341)
_NEG_LN2_HI, _NEG_LN2_LO = _F32(-0.693359375), _F32(2.12194440e-4)
_ROUND_MAGIC = _F32(12582912.0)  # 1.5 * 2**23: adding it rounds to an integer
_ROUND_MAGIC_BITS = np.int64(np.array(12582912.0, np.float32).view(np.uint32))
_EXP_MIN = _F32(-87.33)  # below, e^x is subnormal: returned as 0
_E0, _E1, _E2, _E3, _E4, _E5 = (_F32(v) for v in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                                  4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
# log: x = m 2^k with m in [sqrt(1/2), sqrt(2)); log m by a degree-8 polynomial in m - 1 (Cephes logf).
_LN2_HI, _LN2_LO = _F32(0.693359375), _F32(-2.12194440e-4)
_SQRT_HALF = _F32(0.707106781186547524)
_L0, _L1, _L2, _L3, _L4, _L5, _L6, _L7, _L8 = (
    _F32(v) for v in (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
                      -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1))
_F32_MIN_NORMAL = _F32(1.17549435e-38)


# ----------------------------------------------------------------------------- exp and log
@numba.njit(inline="always", cache=True)
def _exp(x):
    """e^x for float32 x <= 0 (logits minus their max): 0 at -Inf and below -87.3, NaN for NaN."""
    t = fma(x, _LOG2E, _ROUND_MAGIC)
    k = t - _ROUND_MAGIC  # round(x / ln2), exactly
    r = fma(k, _NEG_LN2_HI, x)
    r = fma(k, _NEG_LN2_LO, r)
    p = fma(fma(fma(fma(fma(_E0, r, _E1), r, _E2), r, _E3), r, _E4), r, _E5)
    p = fma(p, r * r, r) + _ONE
    scale = as_f32((bits(t) - _ROUND_MAGIC_BITS + 127) << 23)  # 2^k
    return _ZERO if x < _EXP_MIN else p * scale


@numba.njit(inline="always", cache=True)
def _log(x):
    """log x for positive float32 x; subnormals count as the smallest normal (they only appear
    in p log p, ~1e-36 either way).  Callers mask x <= 0 and NaN."""
    x = _F32_MIN_NORMAL if x < _F32_MIN_NORMAL else x
    b = bits(x)
    e = (b >> 23) - 126
    m = as_f32((b & 0x007FFFFF) | 0x3F000000)  # x = m 2^e, m in [0.5, 1)
    small = m < _SQRT_HALF
    e = e - 1 if small else e
    f = (m + m if small else m) - _ONE
    z = f * f
    p = fma(fma(fma(fma(_L0, f, _L1), f, _L2), f, _L3), f, _L4)
    p = fma(fma(fma(fma(p, f, _L5), f, _L6), f, _L7), f, _L8)
    ef = _F32(e)
    y = fma(ef, _LN2_LO, p * f * z) - _HALF * z
    return fma(ef, _LN2_HI, f + y)


# ----------------------------------------------------------------------------- passes over a row
@numba.njit(cache=True)
def _max(x):
    """max of x, ignoring NaN (-Inf if empty or all NaN)."""
    m = _NEG_INF
    for c in range(x.size):
        m = maxnum(m, x[c])
    return m


@numba.njit(inline="always", cache=True)
def _convert_row(src, e, n, mode, z, z_sum):
    """Row n of epoch e (raw bits at ``src[0][e] + n * src[1]``) as float32 into ``z``, added into ``z_sum``."""
    addr = src[0][e] + n * src[1]
    C = z.size
    if mode == _FP32:
        s32 = numba.carray(u32_at(addr), (C,))
        for c in range(C):
            v = as_f32(s32[c])
            z[c] = v
            z_sum[c] += v
        return
    s = numba.carray(u16_at(addr), (C,))
    if mode == _FP16:
        for c in range(C):
            v = half_to_f32(s[c])
            z[c] = v
            z_sum[c] += v
    else:
        for c in range(C):
            v = as_f32(np.int64(s[c]) << 16)
            z[c] = v
            z_sum[c] += v


@numba.njit(inline="always", cache=True)
def _add_row(src, e, n, mode, z_sum):
    """Row n of epoch e added into ``z_sum`` (float32), and nothing else: the soft-label tier."""
    addr = src[0][e] + n * src[1]
    C = z_sum.size
    if mode == _FP32:
        s32 = numba.carray(u32_at(addr), (C,))
        for c in range(C):
            z_sum[c] += as_f32(s32[c])
        return
    s = numba.carray(u16_at(addr), (C,))
    if mode == _FP16:
        for c in range(C):
            z_sum[c] += half_to_f32(s[c])
    else:
        for c in range(C):
            z_sum[c] += as_f32(np.int64(s[c]) << 16)


@numba.njit(cache=True)
def _load_row(src, e, n, mode, y, z, z_sum):
    """Row n of epoch e as float32 into ``z``, added into ``z_sum``; return the max over the
    classes other than ``y`` (ignoring NaN; -Inf when there is none)."""
    _convert_row(src, e, n, mode, z, z_sum)
    z_y = z[y]
    z[y] = _NEG_INF  # one vectorised pass rather than two around y
    m_o = _max(z)
    z[y] = z_y
    return m_o


@numba.njit(cache=True)
def _exp_shifted(z, m, ex):
    """ex[c] = exp(z[c] - m)."""
    for c in range(z.size):
        ex[c] = _exp(z[c] - m)


# The only code compiled with a fast-math flag: ``reassoc`` lets the compiler keep several
# partial sums in vector registers.  Both add up terms of one sign computed elsewhere.
@numba.njit(fastmath={"reassoc"}, cache=True)
def _sum(x):
    s = _ZERO
    for c in range(x.size):
        s += x[c]
    return s


@numba.njit(fastmath={"reassoc"}, cache=True)
def _sum_and_squares(x):
    s = _ZERO
    q = _ZERO
    for c in range(x.size):
        v = x[c]
        s += v
        q += v * v
    return s, q


@numba.njit(cache=True)
def _probs_and_tdds(z, m, log_s, inv_s, ex, p_sum, prev, has_prev):
    """Fold one observed row into the sum of probabilities; return its TDDS divergence against
    ``prev`` (the previous observed epoch's log-probabilities, then replaced by this one's).

    p = exp(z - m) / s and log p = (z - m) - log s, as ``torch.log_softmax`` computes them.
    ``z`` is overwritten with the divergence's terms.
    """
    C = z.size
    if not has_prev:
        for c in range(C):
            p_sum[c] += ex[c] * inv_s
            prev[c] = (z[c] - m) - log_s
        return _NAN
    for c in range(C):
        p = ex[c] * inv_s
        logp = (z[c] - m) - log_s
        p_sum[c] += p
        z[c] = abs(p * (logp - prev[c]))
        prev[c] = logp
    return _sum(z)


@numba.njit(cache=True)
def _first_index(z, v, stop):
    """First c < stop with z[c] == v (for v = NaN: the first NaN); ``stop`` if none."""
    nan = v != v
    for c in range(stop):
        if (z[c] != z[c]) if nan else (z[c] == v):
            return c
    return stop


@numba.njit(cache=True)
def _all_finite(x):
    bad = 0
    for c in range(x.size):
        bad |= np.int64((bits(x[c]) & 0x7F800000) == 0x7F800000)  # exponent all ones: Inf or NaN
    return bad == 0


@numba.njit(cache=True)
def _row_is_finite(src, e, n, mode, z, scratch):
    _load_row(src, e, n, mode, 0, z, scratch)
    return _all_finite(z)


@numba.njit(cache=True)
def _fold_probs(src, e, n, mode, y, z, ex, z_sum, p_sum):
    """Row n of epoch e added into ``z_sum`` and its softmax into ``p_sum``, and nothing else:
    the probabilities tier (what the mean probabilities of confident learning need).  The
    max, the sum of exponentials and p = ex / s are computed as in :func:`_sample`, so both
    tiers give bit-identical sums."""
    m = maxnum(_load_row(src, e, n, mode, y, z, z_sum), z[y])
    _exp_shifted(z, m, ex)
    ex_y = ex[y]
    ex[y] = _ZERO
    s = _sum(ex) + ex_y
    ex[y] = ex_y
    inv_s = _ONE / s
    for c in range(z.size):
        p_sum[c] += ex[c] * inv_s


# ----------------------------------------------------------------------------- one sample
@numba.njit(cache=True)
def _sample(src, mode, counts, y, n, z, ex, z_sum, p_sum, prev,
            n_obs_out, nonfinite_out, entropy_out, entropy_prob_out, p_max_out, p_second_out, soft_argmax_out,
            p_label_out, logp_label_out, correct_out, margin_out, el2n_out, tdds_out, p_avg_out, p_soft_out):
    """All statistics of sample ``n`` (label ``y``), using the scratch rows z, ex, z_sum, p_sum, prev [C].

    With empty per-epoch outputs ([0, N]: the ``probs`` tier) each row is only folded into the
    sum of probabilities (:func:`_fold_probs`), with the same arithmetic as the full tier."""
    E = counts.shape[0]
    C = z.size
    per_epoch = logp_label_out.shape[0] > 0
    z_sum[:] = _ZERO
    p_sum[:] = _ZERO
    n_obs = 0
    for e in range(E):
        if not per_epoch:
            if counts[e, n] > 0:
                _fold_probs(src, e, n, mode, y, z, ex, z_sum, p_sum)
                n_obs += 1
            continue
        if counts[e, n] <= 0:
            logp_label_out[e, n] = _NAN
            correct_out[e, n] = _NAN
            margin_out[e, n] = _NAN
            el2n_out[e, n] = _NAN
            tdds_out[e, n] = _NAN
            continue
        m_o = _load_row(src, e, n, mode, y, z, z_sum)
        z_y = z[y]
        m = maxnum(m_o, z_y)
        _exp_shifted(z, m, ex)
        # Sums over the classes other than the label: EL2N without the cancelling 1 - p_y.
        ex_y = ex[y]
        ex[y] = _ZERO
        s_o, q_o = _sum_and_squares(ex)
        ex[y] = ex_y
        s = s_o + ex_y
        log_s = _F32(np.log(s))
        if s == s:
            # No NaN, no +Inf, a finite max: the label is the first argmax iff it is the
            # largest and no earlier class ties with it.
            if z_y > m_o:
                correct = _ONE
            elif z_y < m_o:
                correct = _ZERO
            else:
                correct = _ONE if _first_index(z, m, y) == y else _ZERO
            margin = z_y - m_o
        else:
            # Undefined softmax (NaN, +Inf, or only -Inf): torch.argmax takes the first NaN,
            # else the first maximum; torch.max propagates NaN into the margin.
            first_nan = _first_index(z, _NAN, C)
            if first_nan < C:
                correct = _ONE if first_nan == y else _ZERO
                margin = _NAN
            else:
                correct = _ONE if _first_index(z, m, C) == y else _ZERO
                margin = z_y - m_o
        logp_label_out[e, n] = (z_y - m) - log_s
        correct_out[e, n] = correct
        margin_out[e, n] = margin
        # With one class there is no other class: the reference's sum over none is 0 whatever z.
        el2n_out[e, n] = _ZERO if C == 1 else np.sqrt(q_o / (s * s) + (s_o / s) * (s_o / s))
        tdds_out[e, n] = _probs_and_tdds(z, m, log_s, _ONE / s, ex, p_sum, prev, n_obs > 0)
        n_obs += 1

    n_obs_out[n] = n_obs
    if n_obs == 0:
        _unobserved(n, nonfinite_out, entropy_out, p_max_out, p_second_out, soft_argmax_out, p_label_out, p_soft_out)
        entropy_prob_out[n] = _NAN
        if p_avg_out.shape[0]:
            p_avg_out[n, :] = _NAN
        return
    nonfinite_out[n] = _nonfinite(src, mode, counts, n, z_sum, z, ex)
    _soft_label(z_sum, n_obs, y, n, z, ex, entropy_out, p_max_out, p_second_out, soft_argmax_out, p_label_out,
                p_soft_out)
    denom = _F32(n_obs)
    for c in range(C):
        pa = p_sum[c] / denom
        p_sum[c] = pa
        z[c] = pa * _log(pa) if pa > _ZERO else _ZERO
    entropy_prob_out[n] = -_sum(z)
    if p_avg_out.shape[0]:
        p_avg_out[n, :] = p_sum


@numba.njit(cache=True)
def _unobserved(n, nonfinite_out, entropy_out, p_max_out, p_second_out, soft_argmax_out, p_label_out, p_soft_out):
    """The soft-label outputs of a sample with no observation: NaN (index -1), not flagged non-finite."""
    nonfinite_out[n] = False
    entropy_out[n] = _NAN
    p_max_out[n] = _NAN
    p_second_out[n] = _NAN
    soft_argmax_out[n] = -1
    p_label_out[n] = _NAN
    if p_soft_out.shape[0]:
        p_soft_out[n, :] = _NAN


@numba.njit(cache=True)
def _nonfinite(src, mode, counts, n, z_sum, z, scratch):
    """Whether an observed row of sample n holds NaN or +-Inf.

    A NaN or +-Inf in an observed row leaves its class's sum non-finite for good; so does a
    finite overflow, so the samples the sum flags are confirmed row by row.
    """
    if _all_finite(z_sum):
        return False
    for e in range(counts.shape[0]):
        if counts[e, n] > 0 and not _row_is_finite(src, e, n, mode, z, scratch):
            return True
    return False


@numba.njit(cache=True)
def _soft_label(z_sum, n_obs, y, n, z, ex, entropy_out, p_max_out, p_second_out, soft_argmax_out, p_label_out,
                p_soft_out):
    """The soft label's statistics: softmax of the mean observed logits, as the reference computes them;
    the soft label itself into row n of ``p_soft_out`` unless that is empty ([0, C])."""
    C = z.size
    denom = _F32(n_obs)
    for c in range(C):
        z[c] = z_sum[c] / denom
    m = _max(z)
    _exp_shifted(z, m, ex)
    log_s = _F32(np.log(_sum(ex)))
    # p log p with p = 0 (and p = NaN, an undefined soft label) contributes 0, as in the reference.
    for c in range(C):
        logp = (z[c] - m) - log_s
        p = _exp(logp)
        ex[c] = p
        z[c] = p * logp if p > _ZERO else _ZERO
    entropy_out[n] = -_sum(z)
    if p_soft_out.shape[0]:
        p_soft_out[n, :] = ex
    if log_s == log_s:
        p_max = _max(ex)
        top = _first_index(ex, p_max, C)
        p_max_out[n] = p_max
        soft_argmax_out[n] = top
        p_label_out[n] = ex[y]
        ex[top] = _NEG_INF  # the second largest is the largest of the others (ties included)
        p_second_out[n] = _max(ex) if C > 1 else _ZERO
    else:
        # Undefined soft label: NaN probabilities, as topk / gather return them; index 0.
        p_max_out[n] = _NAN
        p_second_out[n] = _NAN if C > 1 else _ZERO
        soft_argmax_out[n] = 0
        p_label_out[n] = _NAN


@numba.njit(cache=True)
def _soft_block(b, src, mode, counts, labels, n_obs_out, nonfinite, entropy, p_max, p_second, soft_argmax, p_label,
                p_soft, C):
    """The soft-label statistics only, for samples of block b: a sum of each sample's observed
    rows, then one softmax (no per-epoch softmax: what the entropy score needs)."""
    N = counts.shape[1]
    z = np.empty(C, np.float32)
    ex = np.empty(C, np.float32)
    z_sum = np.empty(C, np.float32)
    for n in range(b * BLOCK_SAMPLES, min(N, (b + 1) * BLOCK_SAMPLES)):
        z_sum[:] = _ZERO
        k = 0
        for e in range(counts.shape[0]):
            if counts[e, n] > 0:
                _add_row(src, e, n, mode, z_sum)
                k += 1
        n_obs_out[n] = k
        if k == 0:
            _unobserved(n, nonfinite, entropy, p_max, p_second, soft_argmax, p_label, p_soft)
            continue
        nonfinite[n] = _nonfinite(src, mode, counts, n, z_sum, z, ex)
        _soft_label(z_sum, k, labels[n], n, z, ex, entropy, p_max, p_second, soft_argmax, p_label, p_soft)


@numba.njit(parallel=True, nogil=True, cache=True)
def _soft_parallel(src, mode, counts, labels, n_obs, nonfinite, entropy, p_max, p_second, soft_argmax, p_label,
                   p_soft, C):
    for b in numba.prange((counts.shape[1] + BLOCK_SAMPLES - 1) // BLOCK_SAMPLES):
        _soft_block(b, src, mode, counts, labels, n_obs, nonfinite, entropy, p_max, p_second, soft_argmax, p_label,
                    p_soft, C)


@numba.njit(nogil=True, cache=True)
def _soft_serial(src, mode, counts, labels, n_obs, nonfinite, entropy, p_max, p_second, soft_argmax, p_label,
                 p_soft, C):
    for b in range((counts.shape[1] + BLOCK_SAMPLES - 1) // BLOCK_SAMPLES):
        _soft_block(b, src, mode, counts, labels, n_obs, nonfinite, entropy, p_max, p_second, soft_argmax, p_label,
                    p_soft, C)


@numba.njit(cache=True)
def _block(b, src, mode, counts, labels, n_obs, nonfinite, entropy, entropy_prob, p_max, p_second, soft_argmax,
           p_label, logp_label, correct, margin, el2n, tdds, p_avg, p_soft):
    """Samples [b * BLOCK_SAMPLES, (b + 1) * BLOCK_SAMPLES) of the chunk, with their own scratch rows."""
    N, C = counts.shape[1], p_avg.shape[1]
    z = np.empty(C, np.float32)
    ex = np.empty(C, np.float32)
    z_sum = np.empty(C, np.float32)
    p_sum = np.empty(C, np.float32)
    prev = np.empty(C, np.float32)
    for n in range(b * BLOCK_SAMPLES, min(N, (b + 1) * BLOCK_SAMPLES)):
        _sample(src, mode, counts, labels[n], n, z, ex, z_sum, p_sum, prev,
                n_obs, nonfinite, entropy, entropy_prob, p_max, p_second, soft_argmax, p_label,
                logp_label, correct, margin, el2n, tdds, p_avg, p_soft)


# Two entry points over the same blocks: the serial one never touches numba's threading layer,
# so callers that run several in their own threads (the summary store's fold) are safe whatever
# layer numba picked (its fallback, "workqueue", must not be entered from two threads at once).
@numba.njit(parallel=True, nogil=True, cache=True)
def _stats_parallel(
    src,  # (addresses [E] of row 0 of each epoch, bytes per row): rows of C raw bits, uint16 or uint32
    mode,  # _FP16, _BF16 or _FP32
    counts,  # [E, N] int32 observations (0 = unobserved)
    labels,  # [N] int64 in [0, C)
    n_obs, nonfinite, entropy, entropy_prob, p_max, p_second, soft_argmax, p_label,  # [N] outputs
    logp_label, correct, margin, el2n, tdds,  # [E, N] float32 outputs
    p_avg,  # [N, C] float32 mean probabilities, or [0, C] when not wanted
    p_soft,  # [N, C] float32 soft labels, or [0, C] when not wanted
):
    for b in numba.prange((counts.shape[1] + BLOCK_SAMPLES - 1) // BLOCK_SAMPLES):
        _block(b, src, mode, counts, labels, n_obs, nonfinite, entropy, entropy_prob, p_max, p_second, soft_argmax,
               p_label, logp_label, correct, margin, el2n, tdds, p_avg, p_soft)


@numba.njit(nogil=True, cache=True)
def _stats_serial(src, mode, counts, labels, n_obs, nonfinite, entropy, entropy_prob, p_max, p_second, soft_argmax,
                  p_label, logp_label, correct, margin, el2n, tdds, p_avg, p_soft):
    for b in range((counts.shape[1] + BLOCK_SAMPLES - 1) // BLOCK_SAMPLES):
        _block(b, src, mode, counts, labels, n_obs, nonfinite, entropy, entropy_prob, p_max, p_second, soft_argmax,
               p_label, logp_label, correct, margin, el2n, tdds, p_avg, p_soft)


# ----------------------------------------------------------------------------- launcher
_MODES = {np.dtype(np.float16): _FP16, np.dtype(np.float32): _FP32}
# How much a call computes, least first (see fused_stats_cpu's ``tier``).
TIERS = ("soft", "probs", "all")


def _rows_of_tensor(logits_ENC: torch.Tensor):
    """``(addresses, row bytes)`` of a contiguous [E, N, C] tensor, its encoding, and the tensor
    (which must stay alive while the kernel reads it)."""
    z = logits_ENC.contiguous()
    mode = {torch.float16: _FP16, torch.bfloat16: _BF16, torch.float32: _FP32}[z.dtype]
    E, N, C = z.shape
    row = C * z.element_size()
    return (np.arange(E, dtype=np.int64) * (N * row) + z.data_ptr(), row), mode, z


def _rows_of_epochs(epochs_nC, n: int, C: int):
    """``(addresses, row bytes)`` of E arrays [n, C] (e.g. memory-mapped slices), and their encoding."""
    dtypes = {np.dtype(a.dtype) for a in epochs_nC}
    if len(dtypes) != 1 or next(iter(dtypes)) not in _MODES:
        raise ValueError(f"epoch arrays must share one dtype, float16 or float32, got {sorted(map(str, dtypes))}")
    dt = next(iter(dtypes))
    for a in epochs_nC:
        if a.shape != (n, C) or (n > 1 and a.strides[0] != C * dt.itemsize) or (C > 1 and a.strides[1] != dt.itemsize):
            raise ValueError(f"epoch arrays must be C-contiguous rows [n, C] = [{n}, {C}], got {a.shape} {a.strides}")
    return (np.array([a.ctypes.data for a in epochs_nC], np.int64), C * dt.itemsize), _MODES[dt]


def _run(serial, parallel, threads, *args) -> None:
    if threads == 1:
        serial(*args)
        return
    # With numba's OpenMP layer, starting numba's threads (its first get_num_threads) and
    # setting their count also set the OpenMP count torch uses (one libgomp): read torch's
    # count first and restore it, or the caller's training changes speed.
    torch_threads = torch.get_num_threads()
    caller_threads = numba.get_num_threads()  # per OS thread in numba: restored for this one
    if threads is not None:
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        # Dynamic scheduling, one block of samples at a time: a static split would wait for
        # the thread whose core is busiest (these machines are shared).
        with numba.parallel_chunksize(1):
            parallel(*args)
    finally:
        numba.set_num_threads(caller_threads)
        torch.set_num_threads(torch_threads)


def _check_labels(y: np.ndarray, C: int) -> None:
    # Labels index the rows unchecked inside the kernel: an out-of-range one would read out of bounds.
    if len(y) and (y.min() < 0 or y.max() >= C):
        raise ValueError(f"labels must be in [0, {C}), got min {y.min()}, max {y.max()}")


def _row_buffer(name: str, given: np.ndarray | None, wanted: bool, N: int, C: int) -> np.ndarray:
    """The [N, C] float32 output ``name`` writes into: the caller's buffer, a new one, or [0, C] (not wanted)."""
    if given is None:
        return np.empty((N if wanted else 0, C), np.float32)
    if given.dtype != np.float32 or given.shape != (N, C) or not given.flags.c_contiguous:
        raise ValueError(f"{name}_out must be a C-contiguous float32 array [{N}, {C}], got {given.dtype} {given.shape}")
    return given


def _compute(src, mode, cnt: np.ndarray, y: np.ndarray, C: int, *, threads, with_p_avg: bool, with_p_soft: bool,
             tier: str, p_avg_out: np.ndarray | None = None, p_soft_out: np.ndarray | None = None) -> FusedStats:
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {', '.join(TIERS)}, got {tier!r}")
    E, N = cnt.shape
    with_p_avg, with_p_soft = with_p_avg or p_avg_out is not None, with_p_soft or p_soft_out is not None
    if tier == "soft" and with_p_avg:
        raise ValueError("the soft tier does not compute the mean probabilities (p_avg): use tier 'probs'")

    def f32(*shape):
        return np.empty(shape, np.float32)

    n_obs = np.empty(N, np.int64)
    nonfinite = np.empty(N, np.bool_)
    entropy, p_max, p_second, p_label = (f32(N) for _ in range(4))
    soft_argmax = np.empty(N, np.int64)
    p_soft = _row_buffer("p_soft", p_soft_out, with_p_soft, N, C)
    t = torch.from_numpy
    if tier == "soft":
        _run(_soft_serial, _soft_parallel, threads, src, mode, cnt, y, n_obs, nonfinite, entropy, p_max, p_second,
             soft_argmax, p_label, p_soft, C)
        nan_N, empty = t(np.full(N, np.nan, np.float32)), t(f32(0, N))
        return FusedStats(t(n_obs), t(nonfinite), t(entropy), nan_N, t(p_max), t(p_second), t(soft_argmax),
                          t(p_label), empty, empty, empty, empty, empty, None,
                          p_soft=t(p_soft) if with_p_soft else None)
    entropy_prob = f32(N)
    # The probs tier leaves the per-epoch fields empty, which tells _sample to skip them.
    logp_label, correct, margin, el2n, tdds = (f32(E if tier == "all" else 0, N) for _ in range(5))
    p_avg = _row_buffer("p_avg", p_avg_out, with_p_avg, N, C)
    _run(_stats_serial, _stats_parallel, threads, src, mode, cnt, y, n_obs, nonfinite, entropy, entropy_prob, p_max,
         p_second, soft_argmax, p_label, logp_label, correct, margin, el2n, tdds, p_avg, p_soft)
    return FusedStats(*map(t, (n_obs, nonfinite, entropy, entropy_prob, p_max, p_second, soft_argmax, p_label,
                               logp_label, correct, margin, el2n, tdds)),
                      p_avg=t(p_avg) if with_p_avg else None, p_soft=t(p_soft) if with_p_soft else None)


def fused_stats_cpu(
    logits_ENC: torch.Tensor, counts_EN: torch.Tensor, labels_N: torch.Tensor, *, threads: int | None = None,
    with_p_avg: bool = False, with_p_soft: bool = False, tier: str = "all",
) -> FusedStats:
    """Every :class:`~.common.FusedStats` field in one pass over the logits, on the CPU.

    Parameters
    ----------
    logits_ENC : tensor [E, N, C], float16 / bfloat16 / float32, on the CPU
        Per-epoch mean logits; rows with a count of 0 are never read.
    counts_EN : tensor [E, N], integer
        Observations per epoch and sample (0 = not observed).
    labels_N : tensor [N], integer in [0, C)
        Given labels.
    threads : int, optional
        Threads for this call (default: numba's, one per core).  ``1`` runs in the calling
        thread only, without numba's thread pool, for callers that already split work among
        their own threads (the kernel releases the GIL).
    with_p_avg : bool
        Also return the mean over observed epochs of the probabilities, [N, C] (NaN rows for
        unobserved samples); otherwise that field is None.  Not in the ``"soft"`` tier.
    with_p_soft : bool
        Also return the soft label softmax(mean observed logits), [N, C] (NaN rows for
        unobserved samples); otherwise that field is None.  Any tier.
    tier : str
        How much to compute (:data:`TIERS`).  ``"all"``: every field.  ``"soft"``: only the
        soft label's statistics (``n_obs``, ``nonfinite``, ``entropy``, ``p_max``,
        ``p_second``, ``soft_argmax``, ``p_label``): a sum of the observed rows and one softmax
        per sample, no per-epoch softmax; ``entropy_prob`` is NaN.  ``"probs"``: those and
        each epoch's softmax folded into the mean probabilities (``entropy_prob``, ``p_avg``),
        as confident learning needs them.  Below ``"all"`` the per-epoch fields are empty [0, N].

    Returns float32 / int64 / bool CPU tensors, equal to
    :func:`dprune.scoring.stats.compute_stats` up to float32 rounding.  The first call in a
    fresh environment compiles the kernel (cached on disk afterwards).
    """
    E, N, C = check_stats_inputs(logits_ENC, counts_EN, labels_N)
    for t in (logits_ENC, counts_EN, labels_N):
        if t.device.type != "cpu":
            raise ValueError(f"fused_stats_cpu needs CPU tensors, got {t.device}")
    if C == 0:
        raise ValueError("logits must have at least one class")
    y = labels_N.to(torch.int64).contiguous().numpy()
    _check_labels(y, C)
    src, mode, keep = _rows_of_tensor(logits_ENC)
    cnt = counts_EN.to(torch.int32).contiguous().numpy()
    out = _compute(src, mode, cnt, y, C, threads=threads, with_p_avg=with_p_avg, with_p_soft=with_p_soft, tier=tier)
    del keep  # the kernel has finished reading it
    return out


def fused_stats_epochs(
    epochs_nC, counts_EN: np.ndarray, labels_N: np.ndarray, *, threads: int | None = None, with_p_avg: bool = False,
    with_p_soft: bool = False, tier: str = "all", p_avg_out: np.ndarray | None = None,
    p_soft_out: np.ndarray | None = None,
) -> FusedStats:
    """:func:`fused_stats_cpu` over E separate arrays [n, C] (one per epoch), read in place.

    For memory-mapped epoch files: the kernel reads each observed row from the mapping
    directly (page cache -> registers), with no stacked [E, n, C] copy.  ``epochs_nC``: float16
    or float32 arrays with contiguous rows; ``counts_EN`` [E, n] and ``labels_N`` [n].
    ``p_avg_out`` / ``p_soft_out``: a float32 [n, C] buffer to write the mean probabilities /
    the soft labels into (implies ``with_p_avg`` / ``with_p_soft``; the field then views it),
    so that a caller streaming chunks reuses one buffer instead of touching fresh memory per
    chunk.
    """
    E = len(epochs_nC)
    cnt = np.ascontiguousarray(counts_EN, dtype=np.int32)
    y = np.ascontiguousarray(labels_N, dtype=np.int64)
    if E == 0 or cnt.shape[0] != E or y.ndim != 1 or cnt.shape[1] != len(y):
        raise ValueError(f"expected E >= 1 epoch arrays [n, C], counts [E, n] and labels [n]; got {E} arrays, "
                         f"counts {cnt.shape}, labels {y.shape}")
    n = len(y)
    C = epochs_nC[0].shape[1] if epochs_nC[0].ndim == 2 else 0
    if C < 1:
        raise ValueError("logits must have at least one class")
    src, mode = _rows_of_epochs(epochs_nC, n, C)
    _check_labels(y, C)
    return _compute(src, mode, cnt, y, C, threads=threads, with_p_avg=with_p_avg, with_p_soft=with_p_soft,
                    tier=tier, p_avg_out=p_avg_out, p_soft_out=p_soft_out)
