"""What a lent GPU measures: scoring throughput against the device's own copy rate, and recording overhead.

Run by ``benchmarks/gpu_check.sh`` (after the CUDA tests).  Every row of one table is measured
in this one run:

* **copy**: ``torch`` device-to-device copy of the trajectory's bytes (read + write of the
  same tensor: the device's own rate for touching those bytes);
* **fused kernel**: :func:`dprune.kernels.fused_stats.fused_stats` on the same
  device-resident fp16 trajectory, every statistic; GB/s of logits read, and its ratio to the
  copy (the contract: >= 85%);
* **score_store**: the whole scoring pass from a store on disk (page cache warm): reader
  thread, pinned buffers, copies overlapped with the kernel, then the scorers;
* **recording overhead**: a ResNet-50 training step at batch 256 (AMP bf16), with and without
  ``Recorder.record`` of its logits, interleaved step by step, median ms.

Without a GPU it prints one line and exits 0.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _timed(fn, reps: int) -> float:
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def scoring_rows(E: int, N: int, C: int) -> list[tuple]:
    from dprune.kernels.fused_stats import fused_stats

    g = torch.Generator(device="cuda").manual_seed(0)
    z = (torch.randn(E, N, C, device="cuda", generator=g) * 3).half()
    c = torch.ones(E, N, dtype=torch.int32, device="cuda")
    y = torch.randint(0, C, (N,), device="cuda", generator=g)
    nbytes = z.numel() * z.element_size()
    dst = torch.empty_like(z)
    copy_s = _timed(lambda: dst.copy_(z), 5)
    kernel_s = _timed(lambda: fused_stats(z, c, y), 5)
    copy_gbs = nbytes / copy_s / 1e9  # bytes read (the copy also writes as many)
    rows = [("device-to-device copy of the same bytes", nbytes, copy_s, copy_gbs, 1.0),
            ("fused Triton kernel, every statistic", nbytes, kernel_s, nbytes / kernel_s / 1e9,
             (nbytes / kernel_s) / (nbytes / copy_s))]
    dst = None  # free the copy's memory before the disk test
    with tempfile.TemporaryDirectory() as d:
        from dprune.scoring import score_store
        from dprune.store import TrajectoryStore

        store = TrajectoryStore.create(Path(d) / "s", y.cpu().numpy(), C)
        zc = z.cpu().numpy()
        for e in range(E):
            store.begin_epoch(e)
            store.put(e, 0, zc[e], c[e].cpu().numpy())
            store.complete_epoch(e)
        store.close()
        store = TrajectoryStore.open(Path(d) / "s")
        score_store(store, methods=["entropy"])  # warm the page cache and the kernel
        for methods, name in ((["entropy"], "score_store from disk, entropy"), (None, "score_store from disk, every scorer")):
            t0 = time.perf_counter()
            score_store(store, methods=methods)
            s = time.perf_counter() - t0
            rows.append((name, nbytes, s, nbytes / s / 1e9, (nbytes / s) / (nbytes / copy_s)))
    return rows


def recording_rows(steps: int, batch: int) -> list[tuple]:
    import numpy as np
    import torchvision

    from dprune.recorder import Recorder

    model = torchvision.models.resnet50(num_classes=1000).cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device="cuda")
    N = 1_281_167
    with tempfile.TemporaryDirectory() as d:
        rec = Recorder(Path(d) / "s", labels=np.zeros(N, np.int64), n_classes=1000, kind="full")
        rec.begin_epoch(0)
        times = {False: [], True: []}
        for i in range(steps * 2 + 4):
            record = i % 2 == 1
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(x)
                loss = torch.nn.functional.cross_entropy(logits.float(), y)
            if record:
                rec.record(torch.randint(0, N, (batch,)), logits)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            torch.cuda.synchronize()
            if i >= 4:
                times[record].append(time.perf_counter() - t0)
        rec.complete_epoch(0)
        rec.close()
    without, with_ = statistics.median(times[False]) * 1e3, statistics.median(times[True]) * 1e3
    return [("ResNet-50 step, batch 256, bf16", without, with_, (with_ - without) / without)]


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "gpu_check.md")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no GPU: skipped")
        return ""
    name = torch.cuda.get_device_name()
    lines = [f"# GPU check: {name}", "", f"torch {torch.__version__}, CUDA {torch.version.cuda}.", "",
             f"## Scoring: E = {a.epochs}, N = {a.samples:,}, C = {a.classes}, fp16", "",
             "| what | GB of logits | seconds (best of 5) | GB/s | x device copy |", "|---|---|---|---|---|"]
    for what, nbytes, s, gbs, ratio in scoring_rows(a.epochs, a.samples, a.classes):
        lines.append(f"| {what} | {nbytes / 1e9:.2f} | {s:.4f} | {gbs:.1f} | {ratio:.2f} |")
    lines += ["", "## Recording overhead", "", "| step | without recording (ms) | with (ms) | overhead |",
              "|---|---|---|---|"]
    for what, without, with_, rel in recording_rows(a.steps, 256):
        lines.append(f"| {what} | {without:.2f} | {with_:.2f} | {rel:+.2%} |")
    text = "\n".join(lines) + "\n"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
