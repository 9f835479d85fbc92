"""What a training run prints: progress bars and one line per epoch, on rank 0 with ``progress``."""
from __future__ import annotations

import math


class Output:
    """Progress bars and log lines, all silent unless ``enabled``; ``output(msg)`` logs a line."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, msg: str) -> None:
        if self.enabled:
            from tqdm.auto import tqdm

            tqdm.write(msg)

    def bar(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="step", leave=False, disable=not self.enabled)

    def bar_iter(self, it, desc: str):
        from tqdm.auto import tqdm

        return tqdm(it, desc=desc, unit="batch", leave=False, disable=not self.enabled)

    def epoch_line(self, stats: dict, epoch: int, epochs: int) -> None:
        train = f"loss {stats['train_loss']:.4f} train acc {stats['train_acc']:.4f} " if "train_loss" in stats else ""
        test = "" if math.isnan(stats["test_metric"]) else f"test {stats['metric_name']} {stats['test_metric']:.4f} "
        self(f"epoch {epoch + 1}/{epochs}: {train}{test}({stats['seconds']:.1f}s)")
