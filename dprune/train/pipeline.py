"""``dprune run``: record -> score -> prune -> retrain -> evaluate -> report, in one process.

Each stage leaves its files in OUT and is skipped when they are already complete, so a
killed pipeline resumes where it stopped (a killed training stage resumes from its own
checkpoint).  For multi-node runs, launch the stages one by one (see the README).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..fileio import atomic_write_json, atomic_write_text
from ..report import markdown_table, plot_accuracy_curves, plot_score_histogram
from ..scoring import load_scores, save_scores, score_store
from ..select import load_manifest, export_list, select, write_manifest
from ..store import TrajectoryStore
from .config import TrainConfig
from .loop import Trainer


@dataclass
class PipelineConfig:
    out: str
    task: str = "classification"
    dataset: str = "digits"
    data_root: Optional[str] = None
    model: str = "small_cnn"
    record_epochs: int = 12
    epochs: int = 30
    ratio: float = 0.3
    method: str = "entropy"
    policy: str = "class"
    relabel: bool = True
    outlier_fraction: Optional[float] = 0.01
    baseline: bool = True
    label_noise: float = 0.0
    batch_size: int = 64
    lr: Optional[float] = None
    seed: int = 0
    backend: str = "ddp"
    progress: bool = True
    train_options: dict = field(default_factory=dict)
    """Further TrainConfig fields for every training stage (e.g. reid_height, pk_k)."""


def _train(pc: PipelineConfig, name: str, epochs: int, **kw) -> tuple[list[dict], float]:
    cfg = TrainConfig(out=str(Path(pc.out) / name), task=pc.task, dataset=pc.dataset, data_root=pc.data_root, model=pc.model,
                      epochs=epochs, batch_size=pc.batch_size, lr=pc.lr, seed=pc.seed, backend=pc.backend,
                      label_noise=pc.label_noise, noise_kind="symmetric" if pc.label_noise else "none",
                      noise_seed=pc.seed, progress=pc.progress, **{**pc.train_options, **kw})
    done = Path(cfg.out) / "metrics.json"
    if done.exists():
        metrics = json.loads(done.read_text())
        if len(metrics) == epochs:
            return metrics, sum(m["seconds"] for m in metrics)
    t0 = time.perf_counter()
    metrics = Trainer(cfg).fit()
    return metrics, time.perf_counter() - t0


def _summary(metrics: list[dict]) -> dict:
    last = metrics[-1]
    out = {"acc": last["test_metric"], "best": max(m["test_metric"] for m in metrics)}
    out.update({k: last[k] for k in ("mAP", "rank1", "rank5", "rank10", "mINP") if k in last})
    return out


def _say(pc, msg):
    if pc.progress:
        print(msg, flush=True)


def _export_reid_list(pc: PipelineConfig, manifest, path: Path) -> None:
    """The kept training images as ``relpath pid`` lines with the dataset's own pids, so other
    ReID toolkits can train on the pruned, corrected set."""
    from ..data.reid import ReIDRecord, build_reid_dataset, export_list as export_reid

    ds = build_reid_dataset(pc.dataset, pc.data_root)
    original_pid = {label: pid for pid, label in ds.pid_map.items()}
    records = [ReIDRecord(ds.train[i].relpath, original_pid[int(manifest.labels[i])], ds.train[i].camid)
               for i in manifest.kept.tolist()]
    export_reid(records, path)


def run_pipeline(pc: PipelineConfig) -> str:
    """Run every stage; return the report text (also written to OUT/report.md)."""
    out = Path(pc.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "pipeline.json", asdict(pc))

    _say(pc, f"[1/5] recording a {pc.record_epochs}-epoch trajectory of {pc.model} on {pc.dataset}")
    rec_metrics, rec_s = _train(pc, "record", pc.record_epochs, record="train")
    store = TrajectoryStore.open(out / "record" / "trajectory")

    _say(pc, "[2/5] scoring every sample")
    methods = list(dict.fromkeys([pc.method, "entropy"]))
    scores_path = store.run_dir / "scores.npz"
    try:
        scores, meta = load_scores(scores_path, fingerprint=store.fingerprint)
        if not set(methods) <= set(meta["methods"]) or meta["epochs_used"] != store.epochs_completed:
            raise ValueError("stale")
    except ValueError:
        scores, _ = score_store(store, methods=methods, progress=pc.progress)
        save_scores(scores_path, scores, fingerprint=store.fingerprint, epochs=store.epochs_completed,
                    methods=methods, params=None)

    _say(pc, f"[3/5] pruning {pc.ratio:.0%} by {pc.method} ({pc.policy} policy, relabel={pc.relabel}, "
             f"outliers={pc.outlier_fraction or 0:g})")
    sel = select(scores, store.labels, store.n_classes, method=pc.method, ratio=pc.ratio, policy=pc.policy,
                 relabel=pc.relabel, outlier_fraction=pc.outlier_fraction, seed=pc.seed)
    manifest_path = out / "manifest.json"
    write_manifest(manifest_path, sel, source_run=str(store.run_dir), fingerprint=store.fingerprint,
                   n_classes=store.n_classes, scorer_params={})
    manifest = load_manifest(manifest_path, fingerprint=store.fingerprint)
    export_list(manifest, store.sample_ids, out / "kept.tsv")
    if pc.task == "reid":
        _export_reid_list(pc, manifest, out / "train_list.txt")

    curves, rows = {}, []
    if pc.baseline:
        _say(pc, f"[4/5] training on the full set for {pc.epochs} epochs (baseline)")
        full_metrics, full_s = _train(pc, "full", pc.epochs, record="off")
        curves["full data"] = full_metrics
        rows.append({"run": "full data", "samples": store.n_samples, "epochs": pc.epochs,
                     "cost": sum(m["samples_seen"] for m in full_metrics), "seconds": full_s,
                     **_summary(full_metrics)})
    _say(pc, f"[5/5] retraining from scratch on the {len(sel.kept)} kept samples for {pc.epochs} epochs")
    pr_metrics, pr_s = _train(pc, "pruned", pc.epochs, record="off", manifest=str(manifest_path))
    curves[f"pruned {pc.ratio:.0%} ({pc.method})"] = pr_metrics
    rec_cost = sum(m["samples_seen"] for m in rec_metrics)
    rows.append({"run": f"pruned {pc.ratio:.0%} ({pc.method})", "samples": len(sel.kept), "epochs": pc.epochs,
                 "cost": sum(m["samples_seen"] for m in pr_metrics), "seconds": pr_s,
                 **_summary(pr_metrics)})
    rows.append({"run": f"recording ({pc.record_epochs} epochs)", "samples": store.n_samples,
                 "epochs": pc.record_epochs, "cost": rec_cost, "seconds": rec_s,
                 **_summary(rec_metrics)})

    pruned_mask = np.zeros(store.n_samples, bool)
    pruned_mask[sel.pruned] = True
    outlier_mask = np.zeros(store.n_samples, bool)
    outlier_mask[sel.outlier_index] = True
    hist = plot_score_histogram(scores[pc.method], pruned_mask, outlier_mask, out / f"{pc.method}_histogram.png",
                                name=pc.method, n_classes=store.n_classes)
    acc_png = plot_accuracy_curves(curves, out / "accuracy.png")

    metric_name = rec_metrics[-1]["metric_name"]
    lines = [f"# dprune run: {pc.dataset}, {pc.model}", "",
             markdown_table(rows, [("run", "run"), ("samples", "train samples"), ("epochs", "epochs"),
                                   ("cost", "sample-epochs"), ("seconds", "wall s"),
                                   ("acc", f"final {metric_name}"), ("best", f"best {metric_name}")]
                            + ([("mAP", "mAP"), ("rank1", "Rank-1"), ("rank5", "Rank-5"), ("rank10", "Rank-10"),
                                ("mINP", "mINP")] if pc.task == "reid" else [])), "",
             f"- pruned {len(sel.pruned)} of {sel.n_observed} observed samples by `{pc.method}` ({pc.policy} policy); "
             f"removed {len(sel.outlier_index)} outliers; relabelled {len(sel.relabel_index)}; kept {len(sel.kept)}",
             f"- cost = training samples processed; pruned total incl. recording: "
             f"{rows[-2]['cost'] + rec_cost} vs full {rows[0]['cost'] if pc.baseline else 'n/a'}"]
    noise_file = out / "record" / "label_noise.npz"
    if noise_file.exists():
        flipped = np.load(noise_file)["flipped"]
        clean = np.load(noise_file)["clean_labels"]
        flagged = np.zeros(store.n_samples, bool)
        flagged[sel.relabel_index] = True
        tp = int((flagged & flipped).sum())
        lines.append(f"- injected label noise: {int(flipped.sum())} wrong labels; relabelled {int(flagged.sum())}, "
                     f"of which {tp} were wrong (precision {tp / max(1, flagged.sum()):.3f}, recall "
                     f"{tp / max(1, flipped.sum()):.3f}); corrected labels right: "
                     f"{int((sel.relabel_label == clean[sel.relabel_index]).sum())}/{len(sel.relabel_index)}")
    lines += ["", f"![{pc.method}]({hist.name})", f"![accuracy]({acc_png.name})", "",
              f"Files: manifest `{manifest_path}`, kept list `{out / 'kept.tsv'}`"
              + (f", training list in the dataset's format `{out / 'train_list.txt'}`" if pc.task == "reid" else "")
              + f", scores `{scores_path}`."]
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "report.md", text)
    atomic_write_json(out / "report.json", {"rows": rows, "manifest": str(manifest_path)})
    return text + f"\nreport: {out / 'report.md'}\nplots: {hist}, {acc_png}\nmanifest: {manifest_path}\n"
