"""Summary-store overhead: its per-step accumulation against a training step of a small CNN, in one run.

Per step, the summary store adds the batch's logits into the epoch accumulator
(``SummaryStore.write``: ``index_add_`` into a memory-mapped [N, C] fp32 array on a CPU, the
Triton scatter-add on a GPU); once per epoch ``complete_epoch`` folds the accumulator into the
running sums (an O(N*C) pass), which is charged to every step of the epoch as
``complete_epoch time / steps per epoch``.  The full store's ``write`` is timed beside it.

Training steps and writes are interleaved (train, summary write, full write, train, ...) so
machine noise hits all alike; the table reports medians and the ratio to the training step.

    python benchmarks/summary_overhead.py                          # Fashion-MNIST and ReID shapes, CPU
    python benchmarks/summary_overhead.py --device cuda --batch-size 256
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from dprune.models import build_model
from dprune.store import TrajectoryStore
from dprune.summary_store import SummaryStore

CONFIGS = {  # name: (N samples, C classes, input shape)
    "fashion_mnist": (60000, 10, (1, 28, 28)),
    "market1501": (12936, 751, (3, 32, 32)),
}


def bench(config: str, *, batch: int, steps: int, device: str, dtype: str) -> dict:
    n_samples, n_classes, (c, h, w) = CONFIGS[config]
    torch.manual_seed(0)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model = build_model("small_cnn", n_classes, c, image_size=h).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, c, h, w, device=dev)
    y = torch.randint(0, n_classes, (batch,), device=dev)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, n_classes, n_samples)
    perm = torch.from_numpy(rng.permutation(n_samples))
    times: dict[str, list[float]] = {"train": [], "summary": [], "full": []}
    with tempfile.TemporaryDirectory() as d:
        summary = SummaryStore.create(f"{d}/summary", labels, n_classes, dtype=dtype)
        full = TrajectoryStore.create(f"{d}/full", labels, n_classes, dtype=dtype)
        for store in (summary, full):
            store.begin_epoch(0)

        def timed(key: str, fn) -> None:
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[key].append(time.perf_counter() - t0)

        def train_step() -> torch.Tensor:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return logits.detach()

        for i in range(5 + steps):
            if i == 5:
                for v in times.values():
                    v.clear()
            holder = []
            timed("train", lambda: holder.append(train_step()))
            idx = perm[(i * batch) % (n_samples - batch):][:batch].to(dev)
            timed("summary", lambda: summary.write(0, idx, holder[0]))
            timed("full", lambda: full.write(0, idx, holder[0]))
        # The fold of a whole epoch: every sample observed once, as in a real epoch.
        summary.begin_epoch(0)
        for a in range(0, n_samples, 4096):
            b = min(a + 4096, n_samples)
            summary.write(0, torch.arange(a, b, device=dev), torch.randn(b - a, n_classes, device=dev))
        t0 = time.perf_counter()
        summary.complete_epoch(0)
        fold = time.perf_counter() - t0
    med = {k: statistics.median(v) for k, v in times.items()}
    steps_per_epoch = -(-n_samples // batch)
    med["fold_per_step"] = fold / steps_per_epoch
    med["fold"] = fold
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}, small CNN, batch {args.batch_size}, "
          f"{args.dtype}, load average {os.getloadavg()[0]:.1f}")
    print("| data (N, C) | train step (ms) | summary write (ms) | epoch fold (s) | fold per step (ms) "
          "| summary / train step | full-store write (ms) | full / train step |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.configs.split(","):
        m = bench(name, batch=args.batch_size, steps=args.steps, device=args.device, dtype=args.dtype)
        n, c, _ = CONFIGS[name]
        summary = m["summary"] + m["fold_per_step"]
        print(f"| {name} ({n}, {c}) | {m['train'] * 1e3:.2f} | {m['summary'] * 1e3:.3f} | {m['fold']:.2f} | "
              f"{m['fold_per_step'] * 1e3:.3f} | {summary / m['train']:.1%} | {m['full'] * 1e3:.3f} | "
              f"{m['full'] / m['train']:.1%} |")


if __name__ == "__main__":
    main()
