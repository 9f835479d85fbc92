"""ReID evaluation at MSMT17 scale: blocked torch vs the dense NumPy reference, one run.

MSMT17's test protocol ranks 82,161 gallery images for each of 11,659 queries.  The dense
reference (torchreid's formulation) builds the [Q, G] float32 distance matrix (3.8 GB)
and its int64 argsort (7.7 GB); :func:`dprune.evaluate.reid.evaluate_reid` works on
blocks of queries and sorts only the entries ranked above each query's last true match.

Features are synthetic (float32): identity centres plus a camera offset plus noise, with
the noise chosen so that the metrics look like a trained model's (mAP around 0.5), since
the blocked implementation's speed depends on how deep the last true match lies.

Each implementation runs in its own spawned process, so its peak RSS is its own
(``ru_maxrss``); the table also gives the RSS growth during evaluation (peak minus the RSS
with the features loaded).  If the dense reference would not fit in the available memory,
it runs on the first queries only and its time and memory are extrapolated linearly in
Q (both are linear in Q: the matrix has Q rows), which the table says.

Usage::

    python benchmarks/reid_eval.py                                     # MSMT17 scale
    python benchmarks/reid_eval.py --queries 2000 --gallery 20000 --dim 256
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import time

import numpy as np
import torch

from dprune.evaluate.reid import evaluate_reid, evaluate_reid_dense_numpy

GIB = 1024 ** 3


def make_features(n_query: int, n_gallery: int, dim: int, n_ids: int, n_cams: int,
                  seed: int) -> dict[str, np.ndarray]:
    """Synthetic float32 ReID features: centre[id] + offset[camera] + noise, in chunks.

    Chunking keeps the generation's temporaries small, so the RSS before evaluation is
    essentially the features themselves.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, dim), dtype=np.float32)
    cam_offsets = 0.7 * rng.standard_normal((n_cams, dim), dtype=np.float32)
    # Distances concentrate as dim grows (relative spread ~ 1 / sqrt(dim)); scaling the
    # noise with dim ** 0.3 keeps the metrics roughly independent of dim (mAP ~0.5).
    sigma = np.float32(0.25 * dim ** 0.3)
    out = {}
    for side, n in (("query", n_query), ("gallery", n_gallery)):
        pids = rng.integers(0, n_ids, size=n)
        cams = rng.integers(0, n_cams, size=n)
        feats = np.empty((n, dim), dtype=np.float32)
        for s in range(0, n, 8192):
            e = min(s + 8192, n)
            chunk = rng.standard_normal((e - s, dim), dtype=np.float32)
            chunk *= sigma
            chunk += centres[pids[s:e]]
            chunk += cam_offsets[cams[s:e]]
            feats[s:e] = chunk
        out[side], out[f"{side}_ids"], out[f"{side}_cams"] = feats, pids, cams
    return out


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _mem_available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def _worker(impl: str, args: argparse.Namespace, n_eval_queries: int, queue: mp.Queue) -> None:
    f = make_features(args.queries, args.gallery, args.dim, args.ids, args.cams, args.seed)
    q = slice(0, n_eval_queries)
    inputs = (f["query"][q], f["gallery"], f["query_ids"][q], f["gallery_ids"],
              f["query_cams"][q], f["gallery_cams"])
    rss_before = _rss_bytes()
    t0 = time.perf_counter()
    if impl == "blocked":
        result = evaluate_reid(*inputs, metric=args.metric, block_size=args.block_size,
                               device=args.device)
    else:
        result = evaluate_reid_dense_numpy(*inputs, metric=args.metric)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    queue.put({"wall": wall, "peak": peak, "growth": peak - rss_before, "result": result})


def run_isolated(impl: str, args: argparse.Namespace, n_eval_queries: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(impl, args, n_eval_queries, queue))
    proc.start()
    out = queue.get()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{impl} worker exited with code {proc.exitcode}")
    return out


def dense_bytes(n_query: int, n_gallery: int, dim: int) -> int:
    """The dense reference's memory: distances (4 B) + argsort (8 B) per pair + features."""
    return n_query * n_gallery * 12 + (n_query + n_gallery) * dim * 4


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=11659)
    p.add_argument("--gallery", type=int, default=82161)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--ids", type=int, default=3060, help="test identities (MSMT17: 3060)")
    p.add_argument("--cams", type=int, default=15, help="cameras (MSMT17: 15)")
    p.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean")
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dense-queries", type=int, default=None,
                   help="run the dense reference on the first N queries only and "
                        "extrapolate (default: all, unless they do not fit in memory)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    available = _mem_available_bytes()
    n_dense = args.queries if args.dense_queries is None else min(args.dense_queries,
                                                                  args.queries)
    # 25% headroom for the per-query temporaries, the interpreter and the page cache.
    while n_dense > 1 and dense_bytes(n_dense, args.gallery, args.dim) * 1.25 > available:
        n_dense //= 2
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch "
          f"{torch.__version__} with {torch.get_num_threads()} threads, blocked on "
          f"{args.device}; MemAvailable {available / GIB:.1f} GiB")
    print(f"config: Q={args.queries:,} G={args.gallery:,} D={args.dim} ids={args.ids} "
          f"cams={args.cams} metric={args.metric} block_size={args.block_size}; dense "
          f"reference needs ~{dense_bytes(args.queries, args.gallery, args.dim) / GIB:.1f} "
          f"GiB for all queries -> runs on {n_dense:,} queries\n", flush=True)

    blocked = run_isolated("blocked", args, args.queries)
    dense = run_isolated("dense", args, n_dense)
    same_subset = blocked if n_dense == args.queries else run_isolated("blocked", args, n_dense)

    scale = args.queries / n_dense
    d_wall, d_peak, d_growth = dense["wall"] * scale, dense["peak"], dense["growth"] * scale
    extrapolated = n_dense != args.queries
    if extrapolated:
        d_peak = dense["peak"] - dense["growth"] + d_growth
    rows = [
        ("blocked torch (`evaluate_reid`)", f"{args.queries:,}", blocked["wall"],
         blocked["peak"], blocked["growth"], blocked["result"]),
        ("dense numpy (`evaluate_reid_dense_numpy`)"
         + (f", {n_dense:,} queries x{scale:.2f} extrapolated" if extrapolated else ""),
         f"{n_dense:,}", d_wall, d_peak, d_growth, dense["result"]),
    ]
    print("| implementation | queries evaluated | wall time (s) | peak RSS (GiB) "
          "| RSS growth in eval (GiB) | mAP | Rank-1 | mINP |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, nq, wall, peak, growth, r in rows:
        print(f"| {name} | {nq} | {wall:.1f} | {peak / GIB:.2f} | {growth / GIB:.2f} "
              f"| {r['mAP']:.6f} | {r['rank1']:.6f} | {r['mINP']:.6f} |")
    ref, got = dense["result"], same_subset["result"]
    print(f"| ratio dense / blocked | | {d_wall / blocked['wall']:.2f}x "
          f"| {d_peak / blocked['peak']:.2f}x | {d_growth / max(blocked['growth'], 1):.2f}x "
          f"| | | |")
    print(f"\nagreement on the {n_dense:,} queries both evaluated: "
          f"|dmAP| = {abs(ref['mAP'] - got['mAP']):.2e}, "
          f"|dRank-1| = {abs(ref['rank1'] - got['rank1']):.2e}, "
          f"|dmINP| = {abs(ref['mINP'] - got['mINP']):.2e}, "
          f"max |dCMC| = {max(abs(a - b) for a, b in zip(ref['cmc'], got['cmc'])):.2e}; "
          f"skipped queries {got['num_skipped_queries']} (blocked) vs "
          f"{ref['num_skipped_queries']} (dense)")


if __name__ == "__main__":
    main()
