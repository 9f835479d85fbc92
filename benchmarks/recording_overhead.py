"""Recording overhead: a training step without and with ``dprune.Recorder``, full and summary stores.

Steps are interleaved (plain, full-store recording, summary-store recording, plain, ...) in one
process so machine noise hits all alike; medians are reported.  "record call" is the time the
training thread spends in ``Recorder.record`` (a copy of the batch, then the background writer
applies it); the epoch's ``complete_epoch`` (wait for the writer, fsync; for the summary store,
fold the epoch into its running sums) is charged to every step of the epoch.

    python benchmarks/recording_overhead.py                  # Fashion-MNIST and Market-1501 shapes, CPU
    python benchmarks/recording_overhead.py --device cuda --batch-size 256

(``benchmarks/gpu_check.py`` measures a ResNet-50 step on a GPU.)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from dprune.models import build_model  # noqa: E402
from dprune.recorder import Recorder  # noqa: E402

CONFIGS = {  # name: (N samples, C classes, model, input shape)
    "fashion_mnist": (60000, 10, "small_cnn", (1, 28, 28)),
    "market1501": (12936, 751, "resnet18", (3, 64, 32)),
}


def bench(config: str, *, batch: int, steps: int, device: str) -> dict:
    n_samples, n_classes, model_name, (c, h, w) = CONFIGS[config]
    torch.manual_seed(0)
    dev = torch.device(device)
    model = build_model(model_name, n_classes, c, image_size=max(h, w)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, c, h, w, device=dev)
    y = torch.randint(0, n_classes, (batch,), device=dev)
    perm = torch.from_numpy(np.random.default_rng(0).permutation(n_samples))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as d:
        recs = {kind: Recorder(Path(d) / kind, labels=np.zeros(n_samples, np.int64), n_classes=n_classes, kind=kind)
                for kind in ("full", "summary")}
        for r in recs.values():
            r.begin_epoch(0)
        times: dict[str, list] = {"plain": [], "full": [], "summary": []}
        calls: dict[str, list] = {"full": [], "summary": []}

        def step(i: int, kind: str | None) -> None:
            sync()
            t0 = time.perf_counter()
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if kind:
                t1 = time.perf_counter()
                recs[kind].record(perm[(i * batch) % (n_samples - batch):][:batch], logits)
                calls[kind].append(time.perf_counter() - t1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync()
            times[kind or "plain"].append(time.perf_counter() - t0)

        for i in range(steps + 3):
            for kind in (None, "full", "summary"):
                step(i, kind)
        complete = {}
        for kind, r in recs.items():
            t0 = time.perf_counter()
            r.complete_epoch(0)
            complete[kind] = time.perf_counter() - t0
            r.close()
    plain = statistics.median(times["plain"][3:])
    steps_per_epoch = -(-n_samples // batch)
    out = {"config": config, "model": model_name, "batch": batch, "plain_ms": plain * 1e3}
    for kind in ("full", "summary"):
        call = statistics.median(calls[kind][3:])
        per_step = call + complete[kind] / steps_per_epoch
        out[kind] = {"step_ms": statistics.median(times[kind][3:]) * 1e3, "call_ms": call * 1e3,
                     "complete_s": complete[kind], "overhead": per_step / plain}
    return out


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    m = machine()
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with {a.threads} thread(s), device "
             f"{a.device}, load average {', '.join(f'{x:.1f}' for x in m['load_average'])}", "",
             "| shape | model | batch | step (ms) | store | step with recording (ms) | record call (ms) | "
             "complete_epoch (s) | overhead per step |", "|---|---|---|---|---|---|---|---|---|"]
    for name in a.configs.split(","):
        r = bench(name, batch=a.batch_size, steps=a.steps, device=a.device)
        for kind in ("full", "summary"):
            k = r[kind]
            lines.append(f"| {name} | {r['model']} | {r['batch']} | {r['plain_ms']:.2f} | {kind} | {k['step_ms']:.2f} | "
                         f"{k['call_ms']:.3f} | {k['complete_s']:.3f} | {k['overhead']:.2%} |")
    text = "\n".join(lines) + "\n"
    print(text)
    return text


if __name__ == "__main__":
    main()
