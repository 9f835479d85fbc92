"""Scoring throughput: GB/s of trajectory read by each way of computing the statistics, in one run.

For each trajectory size (fp16, E epochs x N samples x C classes, ~2% of (epoch, sample)
rows unobserved), a store is written to disk and every implementation computes the full
:class:`~dprune.scoring.stats.TrajectoryStats` of it:

* ``fused CPU``: ``score_store(store)`` with the ``auto`` backend, i.e. what ``dprune score``
  runs on a CPU: sample chunks read by a reader thread, the numba kernel
  :mod:`dprune.kernels.fused_stats_cpu` on each chunk (threads over samples, one read of the
  logits), the scorers per chunk.
* ``numba kernel in-memory``: the same kernel alone on the whole fp16 trajectory already in RAM
  (no store, no reader thread, no scorers): the kernel against the streaming around it.
* ``fused GPU in-memory``: the Triton kernel on the whole trajectory already on the GPU.
* ``fused GPU streaming``: ``score_store(store, backend="triton")``: pinned host buffers, the
  copy of chunk i + 1 on a second stream while the kernel runs on chunk i.
* ``torch eager``: :func:`dprune.scoring.stats.compute_stats`, the reference, whose softmax,
  means and entropies are separate ops over the whole array (array already in RAM).
* ``numpy``: the same statistics as plain numpy over the whole array (array already in RAM).
* ``plain read``: the machine's read bandwidth for the same bytes: the store read chunk by
  chunk (as the fused path reads it) and converted into a reused fp32 buffer.

GB/s = trajectory bytes / median seconds.  Each row runs in its own spawned process, so its
peak RSS (``VmHWM``; the note gives its growth while timed, over the RSS with torch imported,
the store open and, for the in-memory rows, the array loaded) is its own; the stores are in the page cache (just written) except
with ``--huge``, whose store is larger than RAM.  Whole-array baselines that would not fit
in the available memory (extrapolated from their peak on the smallest size) are skipped.
The machine may be shared: the load average is printed with the table.

Usage::

    python benchmarks/scoring_throughput.py                       # 0.1 / 0.4 / 1.6 / 4 GB
    python benchmarks/scoring_throughput.py --sizes 0.1,1 --repeats 5
    python benchmarks/scoring_throughput.py --huge 30             # adds a 30 GB store (deleted after)
    python benchmarks/scoring_throughput.py --sizes "" --huge 30  # the 30 GB store alone
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

GB = 1e9
E_DEFAULT, C_DEFAULT = 12, 1041  # MSMT17's 1041 training identities, 12 recorded epochs


# ----------------------------------------------------------------------------- the stores
def make_store(path: Path, n_samples: int, n_epochs: int, n_classes: int, seed: int = 0) -> None:
    from dprune.store import TrajectoryStore

    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    labels = rng.integers(0, n_classes, n_samples)
    store = TrajectoryStore.create(path, labels, n_classes, dtype="float16", command="scoring_throughput")
    block = max(1, (64 << 20) // (n_classes * 4))
    onehot_scale = 6.0
    for e in range(n_epochs):
        store.begin_epoch(e)
        for a in range(0, n_samples, block):
            b = min(a + block, n_samples)
            z = torch.randn(b - a, n_classes, generator=g) * 2.0
            # Learning: the label's logit grows with the epoch, as in a real trajectory.
            z[torch.arange(b - a), torch.from_numpy(labels[a:b])] += onehot_scale * (e + 1) / n_epochs
            counts = (rng.random(b - a) > 0.02).astype(np.int32)
            store.put(e, a, z.half().numpy(), counts)
        store.complete_epoch(e)


# ----------------------------------------------------------------------------- baselines
def numpy_stats(z16: np.ndarray, counts: np.ndarray, labels: np.ndarray) -> dict:
    """Every TrajectoryStats field with plain numpy over the whole [E, N, C] array."""
    E, N, C = z16.shape
    z = z16.astype(np.float32)
    obs = counts > 0
    n_obs = obs.sum(0)
    nonfinite = (~np.isfinite(z).all(-1) & obs).any(0)
    denom = np.maximum(n_obs, 1).astype(np.float32)[:, None]
    z_mean = np.where(obs[..., None], z, 0).sum(0) / denom
    lse_mean = np.log(np.exp(z_mean - z_mean.max(-1, keepdims=True)).sum(-1, keepdims=True)) + z_mean.max(-1, keepdims=True)
    logp_mean = z_mean - lse_mean
    p_mean = np.exp(logp_mean)
    entropy = -np.where(p_mean > 0, p_mean * logp_mean, 0).sum(-1)
    order = np.argsort(-p_mean, -1, kind="stable")[:, :2]
    top = np.take_along_axis(p_mean, order, -1)
    p_label = p_mean[np.arange(N), labels]
    m = z.max(-1, keepdims=True)
    logp = z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))
    p = np.exp(logp)
    p_avg = np.where(obs[..., None], p, 0).sum(0) / denom
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy_prob = -np.where(p_avg > 0, p_avg * np.log(p_avg), 0).sum(-1)
    y = np.broadcast_to(labels[None, :, None], (E, N, 1))
    logp_label = np.take_along_axis(logp, y, 2)[..., 0]
    correct = (z.argmax(-1) == labels[None]).astype(np.float32)
    z_others = z.copy()
    np.put_along_axis(z_others, y, -np.inf, 2)
    margin = np.take_along_axis(z, y, 2)[..., 0] - z_others.max(-1)
    p_others = p.copy()
    np.put_along_axis(p_others, y, 0, 2)
    el2n = np.sqrt((p_others * p_others).sum(-1) + p_others.sum(-1) ** 2)
    tdds = np.full((E, N), np.nan, np.float32)
    prev = np.zeros((N, C), np.float32)
    has_prev = np.zeros(N, bool)
    for e in range(E):
        div = np.abs(p[e] * (logp[e] - prev)).sum(-1)
        tdds[e] = np.where(has_prev & obs[e], div, tdds[e])
        prev = np.where(obs[e][:, None], logp[e], prev)
        has_prev |= obs[e]
    return dict(n_obs=n_obs, nonfinite=nonfinite, entropy=entropy, entropy_prob=entropy_prob, p_max=top[:, 0],
                p_second=top[:, 1], soft_argmax=order[:, 0], p_label=p_label, logp_label=logp_label,
                correct=correct, logit_margin=margin, el2n=el2n, tdds_div=tdds)


# ----------------------------------------------------------------------------- the rows
def _plain(store, chunk: int):
    buf16 = np.empty(store.epochs_completed * min(chunk, store.n_samples) * store.n_classes, store.dtype)
    buf32 = torch.empty(buf16.size, dtype=torch.float32)
    for _, _, logits, _ in _chunks(store, chunk, buf16):
        buf32[: logits.size].copy_(torch.from_numpy(logits.reshape(-1)))


def _chunks(store, chunk, buf):
    for a in range(0, store.n_samples, chunk):
        b = min(a + chunk, store.n_samples)
        logits, counts = store.read(a, b, out=buf)
        yield a, b, logits, counts


def _worker(method: str, store_dir: str, repeats: int, queue) -> None:
    from dprune.scoring import score_store
    from dprune.scoring.api import _CPU_CHUNK_BYTES, default_chunk_size
    from dprune.scoring.stats import compute_stats
    from dprune.store import TrajectoryStore

    try:
        store = TrajectoryStore.open(store_dir)
        E, N, C = store.epochs_completed, store.n_samples, store.n_classes
        chunk = default_chunk_size(E, C, _CPU_CHUNK_BYTES)
        if method in ("eager", "numpy", "gpu_memory", "numba_memory"):
            logits, counts = store.read(0, N)  # loading is not timed for the in-memory rows
            labels = store.labels
        if method in ("fused_cpu", "numba_memory"):
            from dprune.kernels.fused_stats_cpu import fused_stats_cpu

            # Load the compiled kernel from numba's cache (or compile it) before timing.
            z1, c1 = store.read(0, 1)
            fused_stats_cpu(torch.from_numpy(z1), torch.from_numpy(c1), torch.from_numpy(store.labels[:1]))
        if method == "gpu_memory":
            from dprune.kernels.fused_stats import fused_stats

            dev = torch.device("cuda")
            z, c, y = (torch.from_numpy(a).to(dev) for a in (logits, counts, labels))
            del logits
        run = {
            # What `dprune score` runs on a CPU (auto); named where auto would pick the GPU.
            "fused_cpu": lambda: score_store(store, backend="numba" if torch.cuda.is_available() else "auto"),
            "numba_memory": lambda: fused_stats_cpu(torch.from_numpy(logits), torch.from_numpy(counts),
                                                    torch.from_numpy(labels)),
            "gpu_stream": lambda: score_store(store, backend="triton"),
            "gpu_memory": lambda: (fused_stats(z, c, y), torch.cuda.synchronize()),
            "eager": lambda: compute_stats(torch.from_numpy(logits), torch.from_numpy(counts), torch.from_numpy(labels)),
            "numpy": lambda: numpy_stats(logits, counts, labels),
            "plain": lambda: _plain(store, chunk),
        }[method]
        base = rss_now()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        queue.put({"times": times, "peak_rss": peak_rss(), "base_rss": base})
    except Exception as e:  # reported in the table
        queue.put({"error": f"{type(e).__name__}: {e}"})


def rss_now() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def peak_rss() -> int:
    """This process's peak resident set (VmHWM).

    Not ``ru_maxrss``: that survives ``exec``, so a spawned child would report its parent's
    peak from before the exec.
    """
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def run_row(method: str, store_dir: Path, repeats: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_worker, args=(method, str(store_dir), repeats, q))
    p.start()
    result = q.get()
    p.join()
    return result


# ----------------------------------------------------------------------------- main
ROWS = [("fused_cpu", "fused CPU (score_store, auto = numba backend)"),
        ("numba_memory", "numba kernel in-memory (fused_stats_cpu)"),
        ("gpu_memory", "fused GPU in-memory (Triton)"),
        ("gpu_stream", "fused GPU streaming from host (score_store, triton)"),
        ("eager", "torch eager (compute_stats, whole array)"),
        ("numpy", "numpy (whole array)"),
        ("plain", "plain read + convert to fp32 (chunked)")]
WHOLE_ARRAY = ("eager", "numpy", "gpu_memory", "numba_memory")
LABELS = dict(ROWS)


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return info["MemAvailable"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="0.1,0.4,1.6,4", help="trajectory sizes in GB, comma-separated")
    ap.add_argument("--epochs", type=int, default=E_DEFAULT)
    ap.add_argument("--classes", type=int, default=C_DEFAULT)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per row (median reported); 1 above 2 GB")
    ap.add_argument("--huge", type=float, default=0, metavar="GB",
                    help="also a store of this many GB on disk (larger than RAM: fused CPU and plain read only)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the stores (default: a temporary dir)")
    args = ap.parse_args()

    sizes = [float(s) for s in args.sizes.split(",") if s]
    row_bytes = args.epochs * args.classes * 2
    root = Path(tempfile.mkdtemp(prefix="dprune-bench-", dir=args.dir))
    cuda = torch.cuda.is_available()
    results = []
    rss_per_byte: dict[str, float] = {}
    try:
        for gb in sizes + ([args.huge] if args.huge else []):
            huge = gb == args.huge and args.huge > 0 and gb not in sizes
            n = max(1, int(gb * GB / row_bytes))
            path = root / f"store_{gb:g}GB"
            t0 = time.perf_counter()
            make_store(path, n, args.epochs, args.classes)
            nbytes = n * row_bytes
            print(f"wrote {nbytes / GB:.2f} GB store ({args.epochs} x {n} x {args.classes}) in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
            repeats = 1 if nbytes > 2 * GB else args.repeats
            for method, label in ROWS:
                if method.startswith("gpu") and not cuda:
                    results.append((nbytes, label, None, None, "not measured (no CUDA device)"))
                    continue
                if huge and method in WHOLE_ARRAY:
                    results.append((nbytes, label, None, None, "skipped: larger than RAM"))
                    continue
                if method in ("eager", "numpy") and method in rss_per_byte:
                    need = rss_per_byte[method] * nbytes
                    if need > 0.8 * available_bytes():
                        results.append((nbytes, label, None, None, f"skipped: needs ~{need / GB:.0f} GB"))
                        continue
                r = run_row(method, path, repeats)
                if "error" in r:
                    results.append((nbytes, label, None, None, r["error"]))
                    continue
                sec = statistics.median(r["times"])
                if method in ("eager", "numpy"):  # the largest size so far predicts best
                    rss_per_byte[method] = r["peak_rss"] / nbytes
                growth = r["peak_rss"] - r["base_rss"]
                results.append((nbytes, label, nbytes / sec / GB, r["peak_rss"],
                                f"{len(r['times'])} run(s); RSS +{growth / GB:.2f} GB while timed"))
                print(f"  {label:<52} {nbytes / sec / GB:7.2f} GB/s  peak RSS {r['peak_rss'] / GB:6.2f} GB "
                      f"(+{growth / GB:.2f} GB while timed)", flush=True)
            shutil.rmtree(path)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(results, args)


def print_table(results, args) -> None:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"\n{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"load average {os.getloadavg()[0]:.1f}; E = {args.epochs}, C = {args.classes}, fp16")
    print(f"| {'trajectory':>10} | {'implementation':<52} | {'GB/s':>6} | {'x numpy':>7} | {'x eager':>7} | "
          f"{'% of plain':>10} | {'peak RSS':>9} | note")
    print(f"|{'-' * 12}|{'-' * 54}|{'-' * 8}|{'-' * 9}|{'-' * 9}|{'-' * 12}|{'-' * 11}|------")
    by_size: dict[int, dict[str, float]] = {}
    for nbytes, label, gbps, _, _ in results:
        by_size.setdefault(nbytes, {})[label] = gbps
    for nbytes, label, gbps, rss, note in results:
        ref = by_size[nbytes]
        numpy_, eager, plain = (ref.get(LABELS[key]) for key in ("numpy", "eager", "plain"))

        def ratio(base, fmt):
            return fmt.format(gbps / base) if gbps and base else "-"

        print(f"| {nbytes / GB:8.2f}GB | {label:<52} | {f'{gbps:.2f}' if gbps else '-':>6} | "
              f"{ratio(numpy_, '{:.1f}'):>7} | {ratio(eager, '{:.1f}'):>7} | {ratio(plain, '{:.0%}'):>10} | "
              f"{f'{rss / GB:.2f} GB' if rss else '-':>9} | {note}")


if __name__ == "__main__":
    main()
