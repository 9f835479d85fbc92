"""CPU implementation of :func:`dprune.scoring.stats.compute_stats`, over cache-sized sub-chunks.

Legend: E epochs, N samples (a chunk of them), n samples of one sub-chunk, C classes.

Same inputs and the same :class:`~dprune.scoring.stats.TrajectoryStats` as the reference,
shaped for the CPU's caches: samples are processed ``n`` at a time so that an [E, n, C] fp32
block and its two work buffers (reused across sub-chunks) stay in cache, and every op runs
in place on them.  The reference allocates a fresh [E, N, C] tensor per op and is bound by
page faults on first touch; this does 14 in-cache passes per logit:

  convert to fp32; sum over epochs; max over the classes other than the label; subtract the
  max; exp; sum and sum of squares over the other classes (EL2N without 1 - p_y); subtract
  the log-sum-exp; scale to probabilities; sum of probabilities over epochs; and four for the
  TDDS divergence (difference, abs, product, sum).

Argmax and the non-finite test, whose torch kernels are slow, come from the max and the
per-sample sums and are recomputed exactly only on the rare rows those cannot decide (ties,
NaN, Inf).  The soft-label statistics run on the [n, C] sums, E times less data.

Sub-chunks are shared among one single-threaded worker per core (:func:`run_split`) rather
than splitting every op across cores.  Even so this is far from one read of the logits:
each pass costs about as much as the fp16-to-fp32 conversion of the plain read, so it runs
at roughly a tenth of the machine's read bandwidth (``benchmarks/scoring_throughput.py``);
a fused CPU kernel would be needed for more.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from .stats import TrajectoryStats

# fp32 bytes of one [E, n, C] block: with its two work buffers it stays in a core's 2 MB L2;
# much smaller blocks pay torch's per-op overhead (~5 us) more often than they gain.
SUB_CHUNK_BYTES = 512 << 10


def sub_chunk_samples(n_epochs: int, n_classes: int, budget_bytes: int = SUB_CHUNK_BYTES) -> int:
    """Samples per sub-chunk so that an [E, n, C] fp32 block is about ``budget_bytes``."""
    return max(1, budget_bytes // max(1, n_epochs * n_classes * 4))


def compute_stats_cpu(
    logits_ENC: torch.Tensor, counts_EN: torch.Tensor, labels_N: torch.Tensor, *, threads: int | None = None
) -> TrajectoryStats:
    """:func:`~dprune.scoring.stats.compute_stats` for CPU tensors, equal up to float32 rounding.

    Parameters
    ----------
    logits_ENC : tensor [E, N, C], any float dtype, on the CPU
    counts_EN : tensor [E, N], integer (0 = not observed)
    labels_N : tensor [N], integer in [0, C)
    threads : int, optional
        Worker threads (default: ``torch.get_num_threads()``, one per core).  Each worker
        takes whole sub-chunks and runs single-threaded ops on them: one parallel region per
        small op would make every op wait for the slowest thread, which on a busy machine
        costs far more than the op (seen: 10-50x slower than one thread).

    Inputs are assumed validated, as for the reference.
    """
    E, N, C = logits_ENC.shape
    nan = float("nan")
    obs_EN = counts_EN > 0
    y_N = labels_N.long()
    n_obs = obs_EN.sum(0)
    denom = n_obs.clamp(min=1).float()
    per_epoch = {k: torch.empty(E, N) for k in ("logp_label", "correct", "logit_margin", "el2n")}
    tdds = torch.full((E, N), nan)
    soft = {k: torch.empty(N) for k in ("entropy", "entropy_prob", "p_max", "p_second", "p_label")}
    soft["soft_argmax"] = torch.empty(N, dtype=torch.int64)
    nonfinite = torch.zeros(N, dtype=torch.bool)

    n_sub = min(N, sub_chunk_samples(E, C))
    starts = list(range(0, N, n_sub))

    def work(my_starts: list[int]) -> None:
        buffers = _Buffers(E, n_sub, C)
        for s in my_starts:
            t = min(s + n_sub, N)
            z_sum, p_sum = _sub_chunk(logits_ENC[:, s:t], obs_EN[:, s:t], y_N[s:t], buffers,
                                      {k: v[:, s:t] for k, v in per_epoch.items()}, tdds[:, s:t], nonfinite[s:t])
            # Per sub-chunk too: [N, C] temporaries would be fresh, page-faulting memory.
            _soft_label_stats(z_sum.div_(denom[s:t, None]), p_sum.div_(denom[s:t, None]), y_N[s:t],
                              {k: v[s:t] for k, v in soft.items()})

    run_split(work, starts, threads or torch.get_num_threads())
    if C == 1:
        per_epoch["el2n"].zero_()  # no other class: the reference's sum over none is 0 whatever z is
    for v in per_epoch.values():
        v.masked_fill_(~obs_EN, nan)
    unobserved = n_obs == 0
    for k, v in soft.items():
        v.masked_fill_(unobserved, -1 if k == "soft_argmax" else nan)
    return TrajectoryStats(n_obs=n_obs.long(), nonfinite=nonfinite, **soft, **per_epoch, tdds_div=tdds)


def run_split(work, items: list, threads: int) -> None:
    """Run ``work(share)`` on interleaved shares of ``items`` in ``threads`` single-threaded workers.

    For CPU work made of many small torch ops: each worker runs its ops with one intra-op
    thread, so no op waits at a barrier for a thread that the OS has descheduled.  torch's
    intra-op thread count is per OS thread (OpenMP) but its default for new threads is
    global, so the caller's count is restored afterwards.  Exceptions propagate.
    """
    threads = max(1, min(threads, len(items)))
    if threads == 1:
        work(items)
        return
    caller_threads = torch.get_num_threads()

    def single_threaded(share: list) -> None:
        torch.set_num_threads(1)
        work(share)

    try:
        with ThreadPoolExecutor(threads, thread_name_prefix="dprune-stats") as pool:
            for f in [pool.submit(single_threaded, items[k::threads]) for k in range(threads)]:
                f.result()
    finally:
        torch.set_num_threads(caller_threads)


class _Buffers:
    """Work buffers reused by every sub-chunk: logits then log-probs, probabilities, scratch."""

    def __init__(self, E: int, n: int, C: int):
        self.z = torch.empty(E * n * C)
        self.p = torch.empty(E * n * C)
        self.d = torch.empty(max(E - 1, 1) * n * C)
        self.sums = torch.empty(2 * n * C)

    def view(self, E: int, n: int, C: int):
        """Contiguous views for a sub-chunk of n samples (n may be a short last chunk).

        Logits [E, n, C], probabilities [E, n, C], scratch [E - 1, n, C], and the sums over
        epochs of logits and of probabilities [n, C] each.
        """
        size = E * n * C
        return (self.z[:size].view(E, n, C), self.p[:size].view(E, n, C),
                self.d[: max(E - 1, 1) * n * C].view(max(E - 1, 1), n, C),
                self.sums[: n * C].view(n, C), self.sums[n * C : 2 * n * C].view(n, C))


def _sub_chunk(z_src, obs, y, work: _Buffers, out: dict, tdds, nonfinite):
    """Fill one sub-chunk's per-epoch stats [E, n] and flags [n]; return its sums over epochs.

    Returns the sums of logits and of probabilities over observed epochs, [n, C] each, in
    ``work``'s buffers.
    """
    E, n, C = z_src.shape
    z, p, d, z_sum, p_sum = work.view(E, n, C)
    z.copy_(z_src)
    unobs = (~obs).reshape(-1).nonzero()[:, 0]
    # Unobserved rows may hold stale values (even NaN): zero them once so that no reduction
    # below needs a mask; their per-epoch outputs are overwritten with NaN by the caller.
    if len(unobs):
        z.view(E * n, C).index_fill_(0, unobs, 0.0)
    torch.sum(z, 0, out=z_sum)
    # A sum over epochs and classes is finite unless an observed logit is NaN or +-Inf, or it
    # overflowed: only those samples need the exact per-row test.
    suspect = (~torch.isfinite(z_sum.sum(-1))).nonzero()[:, 0]
    if len(suspect):
        nonfinite[suspect] = (~torch.isfinite(z[:, suspect]).all(-1) & obs[:, suspect]).any(0)

    y_E1 = y[None, :, None].expand(E, n, 1)
    z_y = z.gather(2, y_E1)[..., 0]
    # With the label's logit at -inf, one max gives the margin's best other class, and the
    # exp below gives the other classes' sums directly (EL2N without cancellation).
    z.scatter_(2, y_E1, float("-inf"))
    max_others = z.amax(-1)  # NaN-propagating, as torch.max in the reference
    torch.sub(z_y, max_others, out=out["logit_margin"])
    m = torch.maximum(max_others, z_y)
    # argmax == y is decided by the max except on ties and NaN, where torch.argmax's
    # first-index rule needs the row itself.
    above, below = z_y > max_others, z_y < max_others
    correct = above.float()
    undecided = ~(above | below)
    if undecided.any():
        y_rows = y.expand(E, n)[undecided]
        rows = z[undecided].scatter_(1, y_rows[:, None], z_y[undecided][:, None])
        correct[undecided] = (rows.argmax(-1) == y_rows).float()
    out["correct"].copy_(correct)

    z.sub_(m[..., None])
    torch.exp(z, out=p)
    sum_others = p.sum(-1)
    sq_others = torch.linalg.vector_norm(p, 2, -1).square_()
    zy_m = z_y - m
    e_y = zy_m.exp()
    sum_exp = sum_others + e_y
    out["el2n"].copy_((sq_others / sum_exp.square() + (sum_others / sum_exp).square_()).sqrt_())
    # log-softmax in place: z - m - log(sum exp(z - m)), as torch.log_softmax computes it.
    log_sum = sum_exp.log()
    z.scatter_(2, y_E1, zy_m[..., None])
    z.sub_(log_sum[..., None])
    logp = z
    torch.sub(zy_m, log_sum, out=out["logp_label"])
    # Unobserved rows are scaled to 0, so the sum over epochs needs no mask.
    scale = obs.float() / sum_exp
    p.mul_(scale[..., None])
    p.scatter_(2, y_E1, (e_y * scale)[..., None])
    torch.sum(p, 0, out=p_sum)
    if E > 1:
        _tdds_into(tdds, logp, p, obs, d)
    return z_sum, p_sum


def _tdds_into(tdds, logp, p, obs, d) -> None:
    """sum_c |p_e,c (log p_e,c - log p_prev,c)| against each sample's previous observed epoch.

    Computed for every pair (e, e - 1) with slices (unobserved rows were zeroed, so they give
    finite values), then NaN where there is no previous observed epoch, and recomputed from
    the right epoch for the few rows whose previous observed epoch is not e - 1.
    """
    E, n, C = logp.shape
    torch.sub(logp[1:], logp[:-1], out=d)
    d.abs_().mul_(p[1:])
    torch.sum(d, -1, out=tdds[1:])
    if bool(obs.all()):
        return
    e_idx = torch.arange(E)[:, None].expand(E, n)
    last = torch.where(obs, e_idx, -1).cummax(0).values
    prev = torch.cat([torch.full((1, n), -1), last[:-1]])
    valid = obs & (prev >= 0)
    tdds.masked_fill_(~valid, float("nan"))
    rows = (valid & (prev != e_idx - 1)).reshape(-1).nonzero()[:, 0]
    if len(rows) == 0:
        return
    flat_logp, flat_p = logp.reshape(E * n, C), p.reshape(E * n, C)
    prev_rows = prev.reshape(-1)[rows] * n + rows % n
    diff = torch.sub(flat_logp[rows], flat_logp[prev_rows]).abs_().mul_(flat_p[rows])
    tdds[rows // n, rows % n] = diff.sum(-1)


def _soft_label_stats(z_mean, p_avg, y, out: dict) -> None:
    """Per-sample statistics of the soft label [n] into ``out``, computed as the reference does.

    Unobserved samples are masked by the caller.
    """
    n, C = z_mean.shape
    logp = torch.log_softmax(z_mean, -1)
    p = logp.exp()
    torch.sum(torch.where(p > 0, p * logp, 0.0), -1, out=out["entropy"]).neg_()
    torch.sum(torch.where(p_avg > 0, p_avg * p_avg.log(), 0.0), -1, out=out["entropy_prob"]).neg_()
    if C >= 2:
        top2 = p.topk(2, dim=-1)
        out["p_max"].copy_(top2.values[:, 0])
        out["p_second"].copy_(top2.values[:, 1])
        out["soft_argmax"].copy_(top2.indices[:, 0])
    else:
        out["p_max"].copy_(p[:, 0])
        out["p_second"].zero_()
        out["soft_argmax"].zero_()
    torch.gather(p, 1, y[:, None], out=out["p_label"][:, None])
