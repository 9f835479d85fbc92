"""Recording overhead: time of a training step with and without writing its logits to the store.

Both variants run in the same process, interleaved step by step (A, B, A, B, ...), so machine
noise hits them alike; the table reports medians and their ratio.  The recorded variant does
exactly what the trainer does on one process: ``Recorder.record`` -> ``TrajectoryStore.write``
(sort the batch's indices, average repeats, read-modify-write the rows of the memory-mapped
epoch file).

    python benchmarks/recording_overhead.py                    # small CNN + ResNet-18, CPU
    python benchmarks/recording_overhead.py --models resnet18 --device cuda --batch-size 256
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from dprune.models import build_model
from dprune.store import TrajectoryStore
from dprune.train.distributed import World
from dprune.train.recorder import Recorder

SHAPES = {"small_cnn": (1, 28, 28), "resnet18": (3, 32, 32)}  # Fashion-MNIST, CIFAR


def bench(model_name: str, *, n_samples: int, n_classes: int, batch: int, steps: int, device: str, dtype: str):
    torch.manual_seed(0)
    dev = torch.device(device)
    c, h, w = SHAPES[model_name]
    model = build_model(model_name, n_classes, c, image_size=h).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, c, h, w, device=dev)
    y = torch.randint(0, n_classes, (batch,), device=dev)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        store = TrajectoryStore.create(d, rng.integers(0, n_classes, n_samples), n_classes, dtype=dtype)
        store.begin_epoch(0)
        rec = Recorder(store, World(0, 1, 0, dev))
        perm = torch.from_numpy(rng.permutation(n_samples))
        record_only: list[float] = []

        def step(i: int, record: bool) -> float:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if record:
                idx = perm[(i * batch) % (n_samples - batch):][:batch]
                t_rec = time.perf_counter()
                rec.record(0, idx.to(dev), logits)
                record_only.append(time.perf_counter() - t_rec)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0

        for i in range(5):  # warm-up
            step(i, True)
            step(i, False)
        plain, recorded = [], []
        record_only.clear()
        for i in range(steps):
            plain.append(step(i, False))
            recorded.append(step(i, True))
        store.close()
    return statistics.median(plain), statistics.median(recorded), statistics.median(record_only)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="small_cnn,resnet18")
    ap.add_argument("--samples", type=int, default=60000, help="N of the store (Fashion-MNIST: 60000)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}; store N={args.samples}, C={args.classes}, {args.dtype}")
    print("| model | batch | step without recording (ms) | step with recording (ms) | record call (ms) | overhead (record call / step) |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        a, b, r = bench(name, n_samples=args.samples, n_classes=args.classes, batch=args.batch_size, steps=args.steps,
                     device=args.device, dtype=args.dtype)
        print(f"| {name} | {args.batch_size} | {a * 1e3:.2f} | {b * 1e3:.2f} | {r * 1e3:.3f} | {100 * r / a:.2f}% |")


if __name__ == "__main__":
    main()
