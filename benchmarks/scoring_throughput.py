"""Scoring throughput on the CPU, against the machine's own rate for the same bytes and a competent torch script.

Two fp16 stores of E epochs x C classes are written, a small and a large one; every row below
is timed on both in this one run (best of ``--repeats``, page cache warm), and reported as the
**marginal** rate (bytes of the large minus the small store, over the difference in time), so
process start-up and fixed costs cancel.  GB/s are of fp16 logits read.

- ``copy``: the epoch files read chunk by chunk (memory-mapped, 4,096 rows) and copied into a
  reused fp16 buffer: the rate of touching the bytes;
- ``roofline``: the same chunks converted into a reused fp32 buffer and summed over the epochs
  (numpy, one thread; and torch, the machine's threads): the machine's rate for reading these
  bytes as numbers.  The best of the two is the roofline the targets refer to;
- ``store reader``: ``TrajectoryStore.read`` into a reused buffer, then converted (the old path);
- ``torch script, entropy``: the ten lines a competent user writes, per 4,096-row chunk: the
  fp16 rows added into an fp32 buffer, their mean, ``log_softmax``, the entropy;
- ``torch script, every statistic``: the same statistics as dprune's kernel per 4,096-row chunk
  with torch ops (dprune's plain torch reference, :func:`dprune.scoring.compute_stats`, run on
  stacked chunk reads);
- ``dprune score --method entropy``, ``--method`` every scorer, ``--method all`` (every
  scorer and the confident-learning detector) and ``dprune score`` (the default: what
  ``dprune run``'s default selection reads, the entropy and the detector), the real command in
  a subprocess, timed from after its imports (importing torch varies by tenths of a second);
  its peak RSS at every size (the detector spills the mean probabilities p-bar
  [N, C] to an unnamed file and reads them back in chunks, so its memory is bounded by the
  chunk);
- the detector's two further passes, as built (p-bar spilled and read back twice: the
  difference between the ``all`` and the every-scorer rows) against the alternative of two more
  passes over the store (one ``kernel pass with p-bar`` row, timed, counts twice);
- ``whole-array numpy`` (what not to do): the whole small trajectory converted at once.

    python benchmarks/scoring_throughput.py                     # 0.6 GB and 4.8 GB stores, E = 12, C = 1000
    python benchmarks/scoring_throughput.py --curve --samples 25000 100000 400000   # 0.6, 2.4, 9.6 GB

``--curve`` times only the roofline and the ``dprune score`` rows, at every size given (the cost
curve: time linear in the store, peak RSS flat).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from dprune.scoring import METHODS, compute_stats  # noqa: E402
from dprune.store import TrajectoryStore  # noqa: E402

ROWS = 4096
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def make_store(path: Path, E: int, N: int, C: int) -> TrajectoryStore:
    rng = np.random.default_rng(0)
    store = TrajectoryStore.create(path, rng.integers(0, C, N), C)
    ones = np.ones(N, np.int32)
    for e in range(E):
        store.begin_epoch(e)
        for a in range(0, N, 8192):
            b = min(a + 8192, N)
            store.put(e, a, (rng.standard_normal((b - a, C), np.float32) * 3).astype(np.float16), ones[a:b])
        store.complete_epoch(e)
    store.close()
    return TrajectoryStore.open(path)


def _maps(store):
    return [np.load(store.run_dir / f"epoch_{e:04d}.logits.npy", mmap_mode="r") for e in range(store.epochs_completed)]


def copy_pass(store):
    maps = _maps(store)
    buf = np.empty((ROWS, store.n_classes), np.float16)
    for a in range(0, store.n_samples, ROWS):
        b = min(a + ROWS, store.n_samples)
        for mm in maps:
            np.copyto(buf[: b - a], mm[a:b])


def roofline_numpy(store):
    maps = _maps(store)
    acc = np.empty((ROWS, store.n_classes), np.float32)
    for a in range(0, store.n_samples, ROWS):
        b = min(a + ROWS, store.n_samples)
        acc[: b - a] = maps[0][a:b]
        for mm in maps[1:]:
            np.add(acc[: b - a], mm[a:b], out=acc[: b - a])


def roofline_torch(store):
    maps = _maps(store)
    acc = torch.empty(ROWS, store.n_classes)
    for a in range(0, store.n_samples, ROWS):
        b = min(a + ROWS, store.n_samples)
        acc[: b - a].copy_(torch.from_numpy(maps[0][a:b]))
        for mm in maps[1:]:
            acc[: b - a].add_(torch.from_numpy(mm[a:b]))


def store_reader(store):
    buf = np.empty(store.epochs_completed * min(ROWS, store.n_samples) * store.n_classes, np.float16)
    acc = np.empty((ROWS, store.n_classes), np.float32)
    for a in range(0, store.n_samples, ROWS):
        b = min(a + ROWS, store.n_samples)
        z, _ = store.read(a, b, out=buf)
        np.sum(z, axis=0, dtype=np.float32, out=acc[: b - a])


def torch_entropy(store):
    """What a competent user writes for the paper's score."""
    maps = _maps(store)
    E = len(maps)
    acc = torch.empty(ROWS, store.n_classes)
    out = []
    for a in range(0, store.n_samples, ROWS):
        b = min(a + ROWS, store.n_samples)
        z = acc[: b - a]
        z.copy_(torch.from_numpy(maps[0][a:b]))
        for mm in maps[1:]:
            z.add_(torch.from_numpy(mm[a:b]))
        logp = torch.log_softmax(z / E, -1)
        out.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(out)


def torch_all(store):
    """The same statistics as dprune's kernel, per chunk, with torch ops."""
    maps = _maps(store)
    counts = [np.load(store.run_dir / f"epoch_{e:04d}.counts.npy", mmap_mode="r") for e in range(len(maps))]
    y = torch.from_numpy(store.labels)
    for a in range(0, store.n_samples, ROWS):
        b = min(a + ROWS, store.n_samples)
        z = torch.from_numpy(np.stack([mm[a:b] for mm in maps]))
        c = torch.from_numpy(np.stack([cc[a:b] for cc in counts]))
        compute_stats(z, c, y[a:b])


def whole_numpy(store):
    maps = _maps(store)
    z = np.stack([np.asarray(mm, np.float32) for mm in maps]).mean(0)
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    return -(p * np.log(np.maximum(p, 1e-30))).sum(1)


def kernel_pass_with_p_avg(store):
    """One pass of dprune's CPU kernel over the store, mean probabilities included (no scorers)."""
    from dprune.kernels.fused_stats_cpu import fused_stats_epochs
    from dprune.scoring.streams import CPU_CHUNK_BYTES, default_chunk_size, stream_stats_cpu

    E, C = store.epochs_completed, store.n_classes
    for _ in stream_stats_cpu(store, fused_stats_epochs, {"with_p_avg": True, "tier": "all"},
                               default_chunk_size(E, C, CPU_CHUNK_BYTES), E):
        pass


# ``dprune score`` in a fresh process, timed from after its imports: importing torch takes ~3 s and
# varies by a few tenths from run to run, which at 0.6 GB is as much as the scoring itself; what
# is timed is the command's own work (opening the store, loading the compiled kernels, scoring,
# writing scores.npz).
_TIMED_SCORE = ("import sys, time\n"
                "from dprune.cli import main\n"
                "import dprune.kernels.fused_stats_cpu, dprune.scoring.confident\n"
                "sys.argv = ['dprune', 'score', *sys.argv[1:]]\n"
                "t0 = time.perf_counter()\n"
                "try:\n    main()\nexcept SystemExit as e:\n    if e.code:\n        raise\n"
                "print(time.perf_counter() - t0)")


def dprune_cli(*args):
    def run(store) -> float:
        r = subprocess.run([sys.executable, "-c", _TIMED_SCORE, str(store.run_dir), "-q", *args],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(r.stderr)
        return float(r.stdout.split()[-1])
    return run


def timed(fn, store, repeats: int) -> float:
    """Best of ``repeats`` runs, or of fewer once the runs so far took 10 s (the slow baselines).
    A function that returns a float has timed itself (the ``dprune score`` rows)."""
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(store)
        took = out if isinstance(out, float) else time.perf_counter() - t0
        best, spent = min(best, took), spent + took
        if spent > 10:
            break
    return best


def peak_rss_growth_mib(store, *args) -> float:
    """Peak RSS of ``dprune score`` above its RSS once its libraries are loaded (torch's CUDA build
    alone maps gigabytes, whatever the store): the peak is reset after the imports (Linux
    ``clear_refs`` 5) and read from ``VmHWM``; memory-mapped trajectory pages count while mapped."""
    code = ("import sys; from dprune.cli import main; import dprune.kernels.fused_stats_cpu, dprune.scoring.confident\n"
            "def kib(key):\n"
            "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key))\n"
            "open('/proc/self/clear_refs', 'w').write('5')\n"
            "base = kib('VmRSS:')\n"
            "sys.argv = ['dprune', 'score', sys.argv[1], '-q', *sys.argv[2:]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(kib('VmHWM:') - base)")
    r = subprocess.run([sys.executable, "-c", code, str(store.run_dir), *args], capture_output=True, text=True,
                       check=True)
    return int(r.stdout.strip().splitlines()[-1]) / 1024


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--samples", type=int, nargs="+", default=[25_000, 200_000],
                   help="N of each store, smallest first (the marginal rate is between the first and the last)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--curve", action="store_true", help="only the roofline and the dprune score rows, every size")
    p.add_argument("--work", type=Path, help="Folder for the stores (default: a temporary one)")
    a = p.parse_args(argv)
    every = ("--method", ",".join(METHODS))
    rows = [("copy (chunked, mmap -> reused fp16 buffer)", copy_pass),
            ("roofline: numpy, 1 thread (chunked mmap -> reused fp32 buffer, summed)", roofline_numpy),
            (f"roofline: torch, {torch.get_num_threads()} threads (same)", roofline_torch),
            ("store reader (TrajectoryStore.read, then converted)", store_reader),
            ("torch script, entropy (chunked)", torch_entropy),
            ("torch script, every statistic (chunked)", torch_all),
            ("kernel pass with p-bar (the unit of the detector's alternative: 2 more store passes)",
             kernel_pass_with_p_avg),
            ("dprune score --method entropy", dprune_cli("--method", "entropy")),
            ("dprune score --method (every scorer)", dprune_cli(*every)),
            (ALL_ROW, dprune_cli("--method", "all")),
            (DEFAULT_ROW, dprune_cli())]
    if a.curve:
        rows = [r for r in rows if r[0].startswith(("roofline", "dprune score --method (every", ALL_ROW, DEFAULT_ROW))]
    m = machine()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=a.work) as d:
        stores = [make_store(Path(d) / f"s{n}", a.epochs, n, a.classes) for n in a.samples]
        nbytes = [s.nbytes() for s in stores]
        os.sync()  # the new stores' dirty pages go to disk now, not while the rows below are timed
        for s in stores:  # warm the page cache and numba's compiled-code cache
            copy_pass(s)
            dprune_cli("--method", "entropy")(s)
        times = {name: [timed(fn, s, a.repeats) for s in stores] for name, fn in rows}
        rss_rows = (("every scorer", every), ("every scorer and the detector", ("--method", "all")),
                    ("the default", ()))
        if not a.curve:
            rss_rows = (("entropy", ("--method", "entropy")),) + rss_rows
        rss = {name: [peak_rss_growth_mib(s, *args) for s in stores] for name, args in rss_rows}
        whole = None if a.curve else timed(whole_numpy, stores[0], 1)
    rate = {name: (nbytes[-1] - nbytes[0]) / (t[-1] - t[0]) / 1e9 for name, t in times.items()}
    roof_rows = [name for name, _ in rows if name.startswith("roofline")]
    roof = max(rate[r] for r in roof_rows)
    ent_script = rate.get("torch script, entropy (chunked)")
    all_script = rate.get("torch script, every statistic (chunked)")
    sizes = [f"{n:,} ({b / 1e9:.2f} GB)" for n, b in zip(a.samples, nbytes)]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({torch.get_num_threads()} threads), numba "
             f"threads {os.environ.get('NUMBA_NUM_THREADS', 'default')}; load average (1, 5, 15 min) at the start "
             f"{', '.join(f'{x:.1f}' for x in load_before)}, at the end "
             f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}. "
             f"Stores: E = {a.epochs}, C = {a.classes}, fp16, N = {', '.join(sizes)}; marginal rates between the "
             f"first and the last, best of {a.repeats} (of fewer for rows slower than 10 s).", "",
             "| what | " + " | ".join(f"s ({b / 1e9:.1f} GB)" for b in nbytes) +
             " | GB/s (marginal) | x roofline | x torch script (same output) | GB/s (largest store, whole time; a command after its imports) |",
             "|---|" + "---|" * (len(nbytes) + 4)]
    for name, _ in rows:
        same = ent_script if name.endswith("--method entropy") else \
            all_script if name.startswith("dprune score --method (every") else None
        lines.append(f"| {name} | " + " | ".join(f"{t:.2f}" for t in times[name]) + f" | {rate[name]:.2f} | "
                     f"{rate[name] / roof:.2f} | {'' if same is None else f'{rate[name] / same:.2f}'} | "
                     f"{nbytes[-1] / times[name][-1] / 1e9:.2f} |")
    if whole is not None:
        lines.append(f"| whole-array numpy (what not to do; smallest store only) | {whole:.2f} | " +
                     " | " * (len(nbytes) - 1) +
                     f"{nbytes[0] / whole / 1e9:.2f} | {nbytes[0] / whole / 1e9 / roof:.2f} | | |")
    lines += ["", "Peak RSS of `dprune score` beyond the loaded libraries (MiB): " + "; ".join(
        f"{k}: " + ", ".join(f"{v:.0f} at {b / 1e9:.1f} GB" for v, b in zip(vs, nbytes)) for k, vs in rss.items())]
    if "kernel pass with p-bar (the unit of the detector's alternative: 2 more store passes)" in times:
        kp = times["kernel pass with p-bar (the unit of the detector's alternative: 2 more store passes)"]
        det = [t1 - t0 for t0, t1 in zip(times["dprune score --method (every scorer)"], times[ALL_ROW])]
        lines += ["", "The detector's passes after the scoring pass, largest store: as built (p-bar spilled and read "
                  f"back twice; `all` minus every-scorer row) {det[-1]:.2f} s; the alternative (two more passes of "
                  f"the kernel over the store) 2 x {kp[-1]:.2f} = {2 * kp[-1]:.2f} s."]
    text = "\n".join(lines) + "\n"
    print(text)
    return text


ALL_ROW = "dprune score --method all (every scorer and the confident-learning detector)"
DEFAULT_ROW = "dprune score (the default: entropy and the confident-learning detector)"

if __name__ == "__main__":
    main()
