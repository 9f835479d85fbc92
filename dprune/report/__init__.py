"""Plots and the markdown report of a pipeline run (matplotlib, written as PNG files)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on clusters
    import matplotlib.pyplot as plt

    return plt


def plot_score_histogram(scores_N: np.ndarray, pruned_N: np.ndarray, outlier_N: np.ndarray, path, *,
                         name: str = "entropy", n_classes: int | None = None) -> Path:
    """Histogram of a score with the pruning cut; pruned, kept and removed (outlier, mislabelled) samples coloured."""
    plt = _pyplot()
    s = np.asarray(scores_N, dtype=np.float64)
    ok = ~np.isnan(s)
    bins = np.linspace(np.nanmin(s), np.nanmax(s), 50) if ok.any() else 10
    fig, ax = plt.subplots(figsize=(7, 4))
    kept = ok & ~pruned_N & ~outlier_N
    ax.hist([s[ok & pruned_N], s[kept], s[ok & outlier_N]], bins=bins, stacked=True,
            color=["#c44e52", "#4c72b0", "#8c8c8c"],
            label=[f"pruned ({int((ok & pruned_N).sum())})", f"kept ({int(kept.sum())})",
                   f"removed: outliers, mislabelled ({int((ok & outlier_N).sum())})"])
    if (ok & pruned_N).any():
        cut = s[ok & pruned_N].max()
        ax.axvline(cut, color="k", ls="--", lw=1)
        ax.text(cut, ax.get_ylim()[1] * 0.95, f" cut {cut:.3g}", va="top")
    if name == "entropy" and n_classes:
        ax.set_xlabel(f"entropy of the averaged soft label (nats; max log C = {np.log(n_classes):.2f})")
    else:
        ax.set_xlabel(name)
    ax.set_ylabel("samples")
    ax.legend()
    ax.set_title(f"{name} of every training sample")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_accuracy_curves(curves: dict[str, list[dict]], path) -> Path:
    """Test metric per epoch, one line per run (metrics as written to metrics.json)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, metrics in curves.items():
        ax.plot([m["epoch"] + 1 for m in metrics], [m["test_metric"] for m in metrics], marker="o", ms=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"test {next(iter(curves.values()))[0]['metric_name']}" if curves else "test metric")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("test metric vs epochs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """``columns``: (key, header) pairs; floats are printed with 4 significant digits."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k, "")) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])
