"""``dprune train`` (also ``python -m dprune.train`` for torchrun/deepspeed) and ``dprune run``.

The options of ``train`` are generated from :class:`TrainConfig`'s fields, so the
dataclass is the one place a training option is defined, documented and validated.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import click

from .config import TrainConfig


def _config_options(func, skip=()):
    hints = typing.get_type_hints(TrainConfig)
    for f in reversed(dataclasses.fields(TrainConfig)):
        if f.name in skip:
            continue
        typ = hints[f.name]
        base = next((a for a in typing.get_args(typ) if a is not type(None)), typ)
        flag = "--" + f.name.replace("_", "-")
        default = None if f.default is dataclasses.MISSING else f.default
        help_text = f.metadata.get("help", "")
        if base is bool:
            opt = click.option(f"{flag}/--no-{f.name.replace('_', '-')}", f.name, default=None, help=help_text + (f" [default: {default}]"))
        else:
            opt = click.option(flag, f.name, type=base, default=None,
                               help=help_text + ("" if default is None else f" [default: {default}]"))
        func = opt(func)
    return func


def _make_config(config_path, overrides: dict) -> TrainConfig:
    values = json.loads(Path(config_path).read_text()) if config_path else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "out" not in values:
        raise ValueError("--out is required (the run directory)")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}")
    return TrainConfig(**values)


@click.command("train")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="JSON file of TrainConfig fields; command-line options override it.")
@click.option("--local_rank", "--local-rank", "local_rank", type=int, hidden=True,
              help="Set by the deepspeed launcher; the rank is read from the environment.")
@_config_options
def train_cmd(config_path, local_rank, **overrides):
    """Train a model, recording every sample's logits into OUT/trajectory.

    Runs on one process or under a launcher that sets RANK/WORLD_SIZE (torchrun, deepspeed,
    srun + torchrun); only rank 0 writes.  Rerunning the same command resumes from
    OUT/checkpoint.pt (or OUT/ds_checkpoint).  With --manifest it trains only on the kept
    samples, with corrected labels, and reports accuracy on the test split.
    """
    from .loop import Trainer

    cfg = _make_config(config_path, overrides)
    metrics = Trainer(cfg).fit()
    if metrics and "test_metric" in metrics[-1]:  # rank 0
        click.echo(f"final test {metrics[-1]['metric_name']} {metrics[-1]['test_metric']:.4f} after {len(metrics)} "
                   f"epochs; metrics in {Path(cfg.out) / 'metrics.json'}")


def _parse_sets(items) -> dict:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise ValueError(f"--set expects FIELD=VALUE with a 'dprune train' field, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@click.command("run")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for everything the run writes.")
@click.option("--task", type=click.Choice(["classification", "reid"]), default="classification", show_default=True,
              help="reid: BoT recipe on market1501 / msmt17 / veri776, evaluated by mAP and CMC.")
@click.option("--dataset", default="digits", show_default=True,
              help="Dataset name (digits needs no files); for reid: market1501, msmt17, veri776.")
@click.option("--data-root", "--root", "data_root", type=click.Path(exists=True, file_okay=False),
              help="Folder of the dataset.")
@click.option("--model", default=None, help="small_cnn, resnet18 or resnet50 [default: small_cnn; reid: resnet50].")
@click.option("--record-epochs", type=click.IntRange(min=1), default=12, show_default=True,
              help="Epochs of the short recording run (the paper: about 10% of a full run).")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True,
              help="Epochs of the full-data baseline and of the retraining on the pruned set.")
@click.option("--ratio", type=click.FloatRange(0, 1, max_open=True), default=0.3, show_default=True, help="Prune ratio.")
@click.option("--method", default="entropy", show_default=True, help="Scorer that ranks the samples.")
@click.option("--policy", type=click.Choice(["global", "class"]), default="class", show_default=True)
@click.option("--relabel/--no-relabel", default=True, show_default=True, help="Correct confidently mislabelled samples.")
@click.option("--remove-outliers", "outlier_fraction", type=click.FloatRange(0, 1, max_open=True), default=0.01,
              show_default=True, help="Fraction of flattest soft labels to remove (0 = none).")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also train on the full data set for the comparison table.")
@click.option("--label-noise", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Inject symmetric label noise into the training labels (to watch the correction work).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=float, help="Peak learning rate [default: 0.05 classification, 3.5e-4 reid].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--backend", type=click.Choice(["ddp", "deepspeed"]), default="ddp", show_default=True)
@click.option("--set", "train_options", multiple=True, metavar="FIELD=VALUE",
              help="Any 'dprune train' option for every training stage, e.g. --set reid_height=128 --set pk_k=4.")
def run_cmd(out, task, dataset, data_root, model, record_epochs, epochs, ratio, method, policy, relabel, outlier_fraction,
            baseline, label_noise, batch_size, lr, seed, backend, train_options):
    """The whole method end to end: record -> score -> prune -> retrain -> evaluate -> report.

    Writes OUT/record (trajectory), OUT/manifest.json, OUT/kept.tsv (and for reid
    OUT/train_list.txt, "relpath pid" lines in the dataset's ids), OUT/full and OUT/pruned
    (training runs), and OUT/report.md with OUT/*.png plots.  Rerunning resumes where it stopped.
    """
    from .pipeline import PipelineConfig, run_pipeline

    report = run_pipeline(PipelineConfig(
        out=str(out), task=task, dataset=dataset, data_root=data_root,
        model=model or ("resnet50" if task == "reid" else "small_cnn"), record_epochs=record_epochs, epochs=epochs,
        ratio=ratio, method=method, policy=policy, relabel=relabel, outlier_fraction=outlier_fraction or None,
        baseline=baseline, label_noise=label_noise, batch_size=batch_size, lr=lr, seed=seed, backend=backend,
        train_options=_parse_sets(train_options)))
    click.echo(report)
