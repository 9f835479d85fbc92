"""Recording overhead: a training step without and with ``dprune.Recorder``, full and summary stores.

Steps are interleaved (plain, full-store recording, summary-store recording, plain, ...) in one
process so machine noise hits all alike; medians are reported.  "record call" is the time the
training thread spends in ``Recorder.record`` (a copy of the batch, then the background writer
applies it); the epoch's ``complete_epoch`` (wait for the writer, fsync; for the summary store,
fold the epoch into its running sums) is charged to every step of the epoch.

    python benchmarks/recording_overhead.py                  # Fashion-MNIST and Market-1501 shapes, CPU
    python benchmarks/recording_overhead.py --device cuda --batch-size 256
    python benchmarks/recording_overhead.py --ranks 1,2,4    # torchrun on gloo, gather vs shared writes

``--ranks``: the recorder alone (no model) under ``torchrun --nproc_per_node=W`` on gloo, for
each W and both ways of writing (``gather``: every batch to rank 0, which writes the store;
``shared``: each rank writes its own rows, merged at ``complete_epoch``).  Per step: the time in
``record`` (median over ranks' medians; the gather is a collective, so every rank waits for it),
``complete_epoch`` charged per step, and the bytes rank 0 receives (counted on the tensors the
collectives hand it).  One epoch of warm-up, one measured; the store is fp16.
``--writer-rates``: the logits per second of each writer, in one process (what the projections
in ``RESULTS.md`` rest on).

(``benchmarks/gpu_check.py`` measures a ResNet-50 step on a GPU.)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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
from dprune.scoring.online import SummaryFold  # noqa: E402

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
        recs = {kind: Recorder(Path(d) / kind, labels=np.zeros(n_samples, np.int64), n_classes=n_classes, kind=kind,
                               fold=SummaryFold() if kind == "summary" else None)
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


def recorder_worker(out: str, writes: str, n_samples: int, n_classes: int, batch: int) -> None:
    """One rank of ``--ranks``: two epochs of ``record`` calls on fixed logits; rank 0 prints a JSON line."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    received = [0]
    gather, all_gather = dist.gather, dist.all_gather

    def counted_gather(tensor, gather_list=None, *args, **kw):
        if gather_list:
            received[0] += sum(t.numel() * t.element_size() for t in gather_list[1:])
        return gather(tensor, gather_list, *args, **kw)

    def counted_all_gather(tensor_list, tensor, *args, **kw):
        received[0] += sum(t.numel() * t.element_size() for t in tensor_list[1:])
        return all_gather(tensor_list, tensor, *args, **kw)

    dist.gather, dist.all_gather = counted_gather, counted_all_gather
    rec = Recorder(out, labels=np.zeros(n_samples, np.int64), n_classes=n_classes, writes=writes)
    steps = -(-n_samples // (world * batch))
    z = torch.randn(batch, n_classes)
    calls, complete, per_step_bytes = [], 0.0, 0.0
    for epoch in range(2):
        rec.begin_epoch(epoch)
        received[0] = 0
        mine = torch.arange(rank, steps * world * batch, world) % n_samples
        for s in range(steps):
            t0 = time.perf_counter()
            rec.record(mine[s * batch:(s + 1) * batch], z)
            calls.append(time.perf_counter() - t0) if epoch else None
        per_step_bytes = received[0] / steps
        dist.barrier()
        t0 = time.perf_counter()
        rec.complete_epoch(epoch)
        complete = time.perf_counter() - t0
    rec.close()
    stats = [None] * world
    dist.all_gather_object(stats, (statistics.median(calls), complete))
    if rank == 0:
        print("RESULT " + json.dumps({"writes": rec.writes, "call_ms": statistics.median(c for c, _ in stats) * 1e3,
                                      "complete_s": max(t for _, t in stats), "steps": steps,
                                      "rank0_bytes_per_step": per_step_bytes}), flush=True)
    dist.destroy_process_group()


def writer_rates(n_samples: int = 50_000, n_classes: int = 1_000, batch: int = 256) -> list[str]:
    """Logits per second of the gather's writer (``TrajectoryStore.write``), of a rank's log append
    and of a rank's merge of its share (``merge_part``, W = 1: every row), one thread, one epoch."""
    from dprune.store import TrajectoryStore
    from dprune.store.parts import RankLog, merge_part

    z, perm = torch.randn(batch, n_classes), torch.randperm(n_samples)
    logits = n_samples * n_classes
    with tempfile.TemporaryDirectory() as d:
        store = TrajectoryStore.create(Path(d) / "s", np.zeros(n_samples, np.int64), n_classes)
        for epoch in range(2):  # the second epoch is timed
            store.begin_epoch(epoch)
            t0 = time.perf_counter()
            for a in range(0, n_samples, batch):
                store.write(epoch, perm[a:a + batch], z[: len(perm[a:a + batch])])
            write = time.perf_counter() - t0
            store.complete_epoch(epoch)
        store.begin_epoch(2)
        log = RankLog(store.run_dir, 2, "bench", 0, n_samples, n_classes)
        t0 = time.perf_counter()
        for a in range(0, n_samples, batch):
            log.write(perm[a:a + batch], z[: len(perm[a:a + batch])])
        log.close()
        append = time.perf_counter() - t0
        t0 = time.perf_counter()
        merge_part(store.run_dir, 2, "bench", 1, 0, n_samples, n_classes, store.dtype)
        merge = time.perf_counter() - t0
        log.remove()
        store.close()
    return [f"Writer rates, N = {n_samples:,}, C = {n_classes}, B = {batch}, fp32 logits, fp16 store, one thread:", "",
            "| what | s per epoch | M logits/s |", "|---|---|---|",
            f"| gather: rank 0's writer (TrajectoryStore.write) | {write:.2f} | {logits / write / 1e6:.1f} |",
            f"| shared: a rank's log append (RankLog.write) | {append:.2f} | {logits / append / 1e6:.1f} |",
            f"| shared: a rank's merge of its rows (merge_part, fsync included) | {merge:.2f} | "
            f"{logits / merge / 1e6:.1f} |"]


def distributed_table(ranks: list[int], n_samples: int, n_classes: int, batch: int) -> list[str]:
    lines = [f"Recorder alone under torchrun on gloo: N = {n_samples:,}, C = {n_classes}, B = {batch} per rank, fp32 "
             f"logits, fp16 store; one epoch measured after one of warm-up.", "",
             "| ranks | writes | steps per epoch | record call (ms) | complete_epoch (s) | recording per step (ms) | "
             "bytes received by rank 0 per step |", "|---|---|---|---|---|---|---|"]
    for w in ranks:
        for writes in ("gather", "shared"):
            with tempfile.TemporaryDirectory() as d:
                env = dict(os.environ, OMP_NUM_THREADS="1")
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={w}",
                       __file__, "--worker", d + "/store", writes, str(n_samples), str(n_classes), str(batch)]
                r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
            line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
            if r.returncode or line is None:
                raise RuntimeError(f"torchrun {w} {writes} failed: {r.stdout[-2000:]}{r.stderr[-2000:]}")
            res = json.loads(line[7:])
            per_step = res["call_ms"] + res["complete_s"] * 1e3 / res["steps"]
            lines.append(f"| {w} | {res['writes']} | {res['steps']} | {res['call_ms']:.3f} | {res['complete_s']:.3f} | "
                         f"{per_step:.3f} | {res['rank0_bytes_per_step']:,.0f} |")
    return lines


def main(argv=None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        out, writes, n, c, b = argv[1:6]
        recorder_worker(out, writes, int(n), int(c), int(b))
        return ""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--ranks", help="comma-separated world sizes: the torchrun table instead (gather vs shared)")
    ap.add_argument("--samples", type=int, default=12936, help="--ranks: N (default: Market-1501's training set)")
    ap.add_argument("--classes", type=int, default=751, help="--ranks: C")
    ap.add_argument("--writer-rates", action="store_true", help="the writers' rates in logits/s instead")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    m = machine()
    if a.writer_rates:
        lines = writer_rates() + ["", f"load average at the end {', '.join(f'{x:.1f}' for x in os.getloadavg())}"]
        text = "\n".join(lines) + "\n"
        print(text)
        return text
    if a.ranks:
        lines = [f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, load average at the start "
                 f"{', '.join(f'{x:.1f}' for x in m['load_average'])}", ""]
        lines += distributed_table([int(w) for w in a.ranks.split(",")], a.samples, a.classes, a.batch_size)
        lines.append(f"\nload average at the end {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
        text = "\n".join(lines) + "\n"
        print(text)
        return text
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
