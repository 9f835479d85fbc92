"""The ``dprune`` command line.  Each stage reads the files of the one before.

    dprune train --out RUN ...            train, recording RUN/trajectory (--prune-at T: prune in the run)
    dprune import SRC -o RUN_DIR          trajectory from .npz/.npy or TDDS/DUAL files
    dprune score RUN_DIR                  -> RUN_DIR/scores.npz
    dprune prune RUN_DIR --ratio 0.3      -> manifest.json + manifest.npz
    dprune run --out OUT                  the whole method, with a full-data baseline and a report
    dprune inspect RUN_DIR                what the store holds
    dprune report RUN_OR_MANIFEST         report.html: relabelled, removed and pruned samples, as pictures

Under a launcher: ``torchrun --nproc_per_node=K -m dprune train ...``.

Errors: every expected failure (bad input, a missing or corrupt file, a full disk, a run
directory held by another writer) is one line naming the file and the cause, exit code 1.
``--debug`` or ``DPRUNE_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import typing
from pathlib import Path

import click
import numpy as np

from . import __version__
from .select import DETECTORS, MISLABELLED_ACTIONS, RUN_DEFAULTS


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        name = errno.errorcode.get(e.errno, "")
        where = f": {e.filename}" if e.filename else ""
        return f"{e.strerror}{f' ({name})' if name else ''}{where}"
    text = str(e).strip()
    if isinstance(e, EOFError):
        return f"a file ended too early ({text or 'unexpected end of file'})"
    return text.splitlines()[0] if text else type(e).__name__


def _debug() -> bool:
    return os.environ.get("DPRUNE_DEBUG", "") not in ("", "0")


class _Group(click.Group):
    """One error funnel for every command (see the module docstring)."""

    def invoke(self, ctx):
        from .recorder import RecorderError

        try:
            return super().invoke(ctx)
        except (ValueError, OSError, EOFError, RecorderError) as e:
            if _debug():
                raise
            raise click.ClickException(_one_line(e)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dprune")
@click.option("--debug", is_flag=True, help="Show the traceback of an error (same as DPRUNE_DEBUG=1).")
def main(debug):
    """Training-dynamics data pruning (arXiv 2412.10091, "Data Pruning Can Do More").

    Record every training sample's logits for a few epochs, score each sample by the entropy
    of its averaged soft label, then prune the easiest samples, relabel the ones whose soft
    label disagrees with their label, remove flat-label outliers, and train on the rest -- in
    a second run, or in the same run (train --prune-at).

    Each stage writes files the next one reads, so any stage can be rerun alone.
    """
    if debug:
        os.environ["DPRUNE_DEBUG"] = "1"


def _store_dir(run_dir: Path) -> Path:
    """``run_dir`` itself, or the trajectory store of a ``dprune train --out`` folder."""
    from .store import META

    if not (run_dir / META).exists() and (run_dir / "trajectory" / META).exists():
        return run_dir / "trajectory"
    return run_dir


def _open_store(run_dir):
    """The full or summary store in ``run_dir`` (or its ``trajectory/``), read-only (a snapshot)."""
    from .store import open_store

    return open_store(_store_dir(Path(run_dir)), "r")


def _check_new_output(path: Path, what: str, *, not_same_as=()) -> Path:
    from .rundir import check_output_path

    return check_output_path(path, what, not_same_as=not_same_as)


class _Size(click.ParamType):
    """A size in bytes: ``1000000``, ``500M``, ``1.5G``, ``2T`` (powers of 1024)."""

    name = "size"
    _UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        unit = text[-1:] if text[-1:] in self._UNITS else ""
        try:
            number = float(text[: len(text) - len(unit)])
        except ValueError:
            number = -1.0
        if not 0 <= number < float(1 << 60):
            self.fail(f"{value!r} is not a size such as 500M, 20G or 1000000", param, ctx)
        return int(number * self._UNITS[unit])


_SIZE = _Size()


# ---------------------------------------------------------------------------------- import
@main.command("import")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Run directory to create (the trajectory store).")
@click.option("--format", "fmt", type=click.Choice(["auto", "arrays", "tdds"]), default="auto", show_default=True,
              help="'arrays': an .npz/.npy with logits [E,N,C] (+counts [E,N], labels [N]) or a folder of "
                   "logits.npy/counts.npy/labels.npy; 'tdds': a folder of TDDS/DUAL {e}_Output.npy + {e}_Index.npy; "
                   "'auto' picks 'tdds' when 0_Output.npy exists.")
@click.option("--labels", "labels_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="labels [N] as .npy (required for tdds; overrides labels in the arrays).")
@click.option("--sample-ids", "ids_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Text file with one sample id (e.g. image path) per line, N lines.")
@click.option("--num-samples", type=click.IntRange(min=1), help="N for tdds imports (default: len(labels)).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Storage precision of the logits (float16 refuses finite values beyond +-65504).")
@click.option("--overwrite", is_flag=True, help="Replace an existing store in OUT.")
@click.option("--max-size", type=_SIZE, default=None,
              help="Largest store to create, e.g. 500M, 20G (default: 16 x the size of SRC on disk, at least "
                   "256 MiB; a small compressed file can claim far more logits than it holds).")
def import_cmd(src, out_dir, fmt, labels_path, ids_path, num_samples, dtype, overwrite, max_size):
    """Import a trajectory recorded by another tool into a dprune run directory."""
    from .fileio import read_text
    from .importers import import_arrays, import_tdds, read_labels_file

    labels = read_labels_file(labels_path) if labels_path else None
    ids = read_text(ids_path, "sample ids file").splitlines() if ids_path else None
    if fmt == "auto":
        fmt = "tdds" if (src.is_dir() and (src / "0_Output.npy").exists()) else "arrays"
    if fmt == "tdds":
        if labels is None:
            raise ValueError("TDDS/DUAL folders hold no labels: pass --labels labels.npy")
        store = import_tdds(src, out_dir, labels=labels, n_samples=num_samples, dtype=dtype, sample_ids=ids,
                            progress=True, overwrite=overwrite, max_size=max_size)
    else:
        store = import_arrays(src, out_dir, labels=labels, dtype=dtype, sample_ids=ids, progress=True,
                              overwrite=overwrite, max_size=max_size)
    click.echo(f"imported {store.epochs_completed} epochs x {store.n_samples} samples x {store.n_classes} classes "
               f"({store.dtype.name}) into {out_dir}")


# ----------------------------------------------------------------------------------- score
FIRST_EPOCHS_HELP = ("Use only the first K completed epochs, as if the run had stopped there (the paper scores "
                     "the first 12 epochs of a 120-epoch schedule). Default: every completed epoch.")


def _param_option(func):
    from .scoring.params import param_help

    return click.option("--param", "params", multiple=True, metavar="NAME.OPTION=VALUE",
                        help="Scorer/flag parameter, repeatable (type and range checked): " + param_help())(func)


def _summary_lines(scores: dict, methods) -> list[str]:
    lines = [f"{'score':<14}{'min':>10}{'median':>10}{'max':>10}{'no score':>10}"]
    for m in methods:
        v = scores[m]
        ok = v[~np.isnan(v)]
        stats = (ok.min(), np.median(ok), ok.max()) if ok.size else (np.nan,) * 3
        lines.append(f"{m:<14}" + "".join(f"{x:>10.4g}" for x in stats) + f"{int(np.isnan(v).sum()):>10d}")
    flags = ("mislabel", "outlier", "nonfinite")
    lines.append("flags: " + ", ".join(f"{f} {int(np.asarray(scores[f]).sum())}" for f in flags)
                 + f", unobserved {int((scores['n_observed'] == 0).sum())}")
    return lines


@main.command("score")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-m", "--method", "methods", default="all", show_default=True,
              help="Comma-separated scorers: entropy, entropy_prob, forgetting, el2n, aum, tdds, dyn_unc, "
                   "loss_mean, dual, random; or 'all'.")
@_param_option
@click.option("--backend", type=click.Choice(["auto", "torch", "triton", "numba"]), default="auto", show_default=True,
              help="Implementation of the scoring pass: 'auto' = Triton on a GPU, the numba kernel on a CPU; "
                   "'torch' = the plain torch reference (slow).")
@click.option("--chunk-size", type=click.IntRange(min=1), help="Samples per streamed chunk (default: ~64 MB of fp32).")
@click.option("--first-epochs", type=click.IntRange(min=1), help=FIRST_EPOCHS_HELP)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
def score_cmd(run_dir, methods, params, backend, chunk_size, first_epochs, quiet):
    """Score every sample of RUN_DIR's trajectory; write RUN_DIR/scores.npz.

    RUN_DIR is a trajectory store, or a `dprune train --out` folder (its trajectory/ is used).

    The file holds one float32 array [N] per scorer (higher = more important, NaN = no score)
    and the flags soft_argmax, p_label, p_max, margin, mislabel, outlier, nonfinite,
    n_observed.  Load it with numpy.load(RUN_DIR / "scores.npz").
    """
    from .scoring import SCORES_FILE, check_methods, parse_params, save_scores, score_store

    methods = check_methods(methods)
    params = parse_params(params)
    store = _open_store(run_dir)
    scores, ran = score_store(store, methods=methods, params=params, backend=backend, chunk_size=chunk_size,
                              progress=not quiet, first_epochs=first_epochs)
    path = store.run_dir / SCORES_FILE
    meta = save_scores(path, scores, made_from=store.identity(first_epochs), methods=methods, params=params)
    if not quiet:
        click.echo(f"scored {store.n_samples} samples over {meta['made_from']['epochs']} epochs with the "
                   f"{ran} backend -> {path}")
        click.echo("\n".join(_summary_lines(scores, methods)))
        for m, why in meta["clipped"].items():
            click.echo(f"note: {m}: {why}")


# ----------------------------------------------------------------------------------- prune
def _outliers(value: str | None):
    if value is None:
        return None
    if value == "flagged":
        return value
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"--remove-outliers takes a fraction in [0, 1) or 'flagged', got {value!r}") from None


@main.command("prune")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-r", "--ratio", type=float, required=True,
              help="Fraction of observed samples to prune by score, in [0, 1). Exactly round(ratio * N_observed) go.")
@click.option("-m", "--method", default="entropy", show_default=True,
              help="Scorer that ranks samples (lowest scores are pruned).")
@click.option("--policy", type=click.Choice(["global", "class"]), default="global", show_default=True,
              help="'global' ranks all samples together; 'class' prunes each class in proportion and never empties one.")
@click.option("--relabel/--no-relabel", default=False, show_default=True,
              help="Act on the mislabel detector: relabel the flagged samples (and keep them), or remove them when "
                   "the detector has no agreed label.")
@click.option("--detector", type=click.Choice(DETECTORS), default="argmax", show_default=True,
              help="'argmax': the paper's rule (soft-label argmax differs from the label, p_max >= "
                   "mislabel.min_confidence); 'confident': confident learning over the trajectory; 'aum': remove "
                   "samples whose AUM is below the threshold samples' (needs dprune train --threshold-samples).")
@click.option("--mislabelled", type=click.Choice(MISLABELLED_ACTIONS), default="relabel", show_default=True,
              help="With --relabel, what a flagged sample gets: 'relabel' (the detector's agreed label; removed "
                   "when none is agreed) or 'remove' (every flagged sample removed, no label changed).")
@click.option("--remove-outliers", "outliers", metavar="FRACTION|flagged",
              help="Also remove this fraction of observed samples with the flattest soft labels, or 'flagged': "
                   "those the outlier flag marks (thresholds: --param outlier.*).")
@_param_option
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for breaking score ties.")
@click.option("--first-epochs", type=click.IntRange(min=1), help=FIRST_EPOCHS_HELP)
@click.option("-o", "--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=Path("manifest.json"),
              show_default=True, help="Manifest path; the same arrays go to the .npz beside it.")
@click.option("--export-list", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the kept samples as 'index<TAB>sample_id<TAB>label' lines.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
def prune_cmd(run_dir, ratio, method, policy, relabel, detector, mislabelled, outliers, params, seed, first_epochs, out_path,
              export_list, quiet):
    """Select the samples to keep from RUN_DIR's scores; write a pruning manifest.

    Unobserved samples are kept and listed; samples with non-finite logits are pruned first;
    outliers are removed on top of the pruned ratio.  Scores are taken from RUN_DIR/scores.npz
    when it is current (same trajectory epochs, methods and parameters), else computed.
    """
    from .manifest import export_list as write_list
    from .pruning import prune_store
    from .scoring import check_methods, parse_params
    from .select import PruneSpec

    spec = PruneSpec(method=method, ratio=ratio, policy=policy, relabel=relabel, detector=detector,
                     mislabelled=mislabelled, outliers=_outliers(outliers), seed=seed)
    check_methods([method])
    params = parse_params(params)
    _check_new_output(out_path, "manifest")
    if export_list:
        _check_new_output(export_list, "--export-list", not_same_as=[out_path])
    store = _open_store(run_dir)
    done = prune_store(store, spec, out_path, params=params, first_epochs=first_epochs, progress=not quiet)
    if export_list:
        write_list(done.manifest, store.sample_ids, export_list)
    m = done.manifest.data
    if not quiet:
        click.echo(f"{m['n_observed']} observed samples: pruned {m['n_pruned']} ({m['ratio_achieved']:.2%}) by {method}, "
                   f"removed {m['n_outliers']}, relabelled {len(m['relabelled'])}, kept {m['n_kept']} "
                   f"(unobserved kept: {len(m['unobserved'])}, unscored kept: {len(m['unscored'])}); scores "
                   + ("reused" if done.scored_with is None else f"computed ({done.scored_with})"))
        if m["emptied_classes"]:
            click.echo(f"warning: classes emptied by global pruning: {m['emptied_classes']}", err=True)
        click.echo(f"manifest: {out_path} (+ {out_path.with_suffix('.npz').name})"
                   + (f"; list: {export_list}" if export_list else ""))


# --------------------------------------------------------------------------------- inspect
@main.command("inspect")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def inspect_cmd(run_dir, as_json):
    """Show what RUN_DIR's store holds: size, epochs complete, coverage, and a score summary."""
    from .scoring import SCORES_FILE, load_scores, scores_status

    store = _open_store(run_dir)
    E = store.epochs_completed
    info = {
        "run_dir": str(run_dir), "kind": store.KIND, "n_samples": store.n_samples, "n_classes": store.n_classes,
        "dtype": store.dtype.name, "epochs_completed": E, "epochs_planned": store.meta.get("epochs_planned"),
        "bytes": store.nbytes(), "fingerprint": store.fingerprint["sha256"][:16], "generation": store.generation(),
        "world_size": store.meta.get("world_size"), "command": store.meta.get("command"),
        "saturated_values": store.meta.get("saturated", 0),
    }
    if E:
        counts = store.counts()
        seen = counts > 0
        info["coverage_per_epoch"] = seen.mean(1).round(4).tolist()
        info["never_observed"] = int((~seen.any(0)).sum())
        info["mean_observations_per_epoch"] = round(float(counts.sum(0).mean() / E), 4)
    scores_path = store.run_dir / SCORES_FILE
    if scores_path.exists():
        try:
            scores, meta = load_scores(scores_path, n_samples=store.n_samples)
            made = meta["made_from"]
            stale = scores_status(meta, store.identity(min(made.get("epochs", E), E)), [], meta["params"])
            info["scores"] = {"epochs_used": made.get("epochs"), "methods": meta["methods"], "stale": stale,
                              "clipped": meta.get("clipped", {}), "summary": _summary_lines(scores, meta["methods"])}
        except ValueError as e:
            info["scores"] = {"error": str(e)}
    if as_json:
        click.echo(json.dumps(info))
        return
    click.echo(f"{run_dir}: {store.KIND} store, {store.n_samples} samples x {store.n_classes} classes, "
               f"{store.dtype.name}, {E}/{info['epochs_planned']} epochs complete ({store.nbytes() / 1e6:.1f} MB)")
    click.echo(f"fingerprint {info['fingerprint']}, generation {info['generation'][:12]}, world size "
               f"{info['world_size']}")
    if info["saturated_values"]:
        click.echo(f"note: {info['saturated_values']} recorded logits beyond the fp16 range were saturated to +-65504")
    if E:
        cov = info["coverage_per_epoch"]
        click.echo(f"coverage per epoch: min {min(cov):.2%}, max {max(cov):.2%}; never observed: "
                   f"{info['never_observed']}; observations per sample per epoch: {info['mean_observations_per_epoch']}")
    if "scores" in info:
        sc = info["scores"]
        if "error" in sc:
            click.echo(f"scores.npz: {sc['error']}")
        else:
            state = f"STALE: {sc['stale']}" if sc["stale"] else "current"
            click.echo(f"scores.npz (from {sc['epochs_used']} epochs; {state}):")
            click.echo("\n".join("  " + line for line in sc["summary"]))


# ----------------------------------------------------------------------------------- train
# dprune train's prune-in-run options: the epoch, and the selection (runs.SELECTION_OPTIONS,
# defaults select.RUN_DEFAULTS), with their types and help.
_PRUNE_IN_RUN = {
    "prune_at": (typing.Optional[int], "Prune inside this run: after epoch T, score the first T recorded epochs, write "
                 "OUT/manifest.json and continue epochs T+1.. on the kept samples with the corrected labels, same "
                 "model, optimizer and schedule."),
    "ratio": (float, "With --prune-at: fraction of observed samples to prune by score, in [0, 1)."),
    "method": (str, "With --prune-at: the scorer that ranks samples (lowest pruned)."),
    "policy": (str, "With --prune-at: class (prune each class in proportion, never empty one) or global."),
    "relabel": (bool, "With --prune-at: act on the mislabel detector (relabel, or remove when its suggestion is "
                "not agreed)."),
    "detector": (str, "With --prune-at --relabel: argmax (the paper's rule), confident (confident learning over "
                 "the trajectory) or aum (needs --threshold-samples)."),
    "mislabelled": (str, "With --prune-at --relabel: relabel the flagged samples (where the detector proposes an "
                    "agreed label; removed otherwise) or remove them all."),
    "remove_outliers": (typing.Optional[float],
                        "With --prune-at: also remove this fraction of the flattest soft labels."),
}


def _train_fields() -> dict:
    """``name -> (type, help, default)`` of every ``dprune train`` option: TrainConfig's flat fields
    (:data:`dprune.train.config.FLAT_FIELDS`), then prune-in-run's."""
    from .runs import SELECTION_OPTIONS
    from .select import RUN_DEFAULTS
    from .train.config import FLAT_FIELDS

    out = {name: (f.type, f.help, f.default) for name, f in FLAT_FIELDS.items()}
    for name, (typ, help_text) in _PRUNE_IN_RUN.items():
        default = getattr(RUN_DEFAULTS, SELECTION_OPTIONS[name]) if name in SELECTION_OPTIONS else None
        out[name] = (typ, help_text, default)
    return out


def _config_options(func):
    """One click option per ``dprune train`` field (:func:`_train_fields`, from the dataclasses)."""
    for name, (typ, help_text, default) in reversed(_train_fields().items()):
        base = next((a for a in typing.get_args(typ) if a is not type(None)), typ)
        flag = "--" + name.replace("_", "-")
        help_text += "" if default is None else f" [default: {default}]"
        if base is bool:
            opt = click.option(f"{flag}/--no-{name.replace('_', '-')}", name, default=None, help=help_text)
        else:
            opt = click.option(flag, name, type=base, default=None, help=help_text)
        func = opt(func)
    return func


def _make_config(config_path, overrides: dict):
    """The run (:class:`dprune.runs.TrainRun`) from an optional JSON file of ``dprune train`` fields
    (flat, or in TrainConfig's sections: ``{"optim": {"lr": 0.1}}``; values type-checked) and
    command-line options (which win)."""
    from .options import coerce
    from .runs import SELECTION_OPTIONS, TrainRun, selection
    from .train.config import TrainConfig

    values = {}
    if config_path:
        from .fileio import read_json

        values = _flat_config(read_json(Path(config_path), "--config file"), config_path)
        fields = _train_fields()
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"{config_path}: unknown config keys {unknown}")
        values = {k: coerce(v, fields[k][0], f"{config_path}: {k}") for k, v in values.items()}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "out" not in values:
        raise ValueError("--out is required (the run directory)")
    prune_at = values.pop("prune_at", None)
    picked = {k: values.pop(k) for k in list(values) if k in SELECTION_OPTIONS}
    cfg = TrainConfig.of(**values)
    return TrainRun(cfg, None if prune_at is None else selection(picked, cfg.seed), prune_at)


def _flat_config(doc, config_path) -> dict:
    """A ``--config`` object with its sections (``"optim": {...}``) spread into flat names."""
    from .train.config import FLAT_FIELDS, SECTIONS

    if not isinstance(doc, dict):
        raise ValueError(f"{config_path}: a config must be a JSON object of dprune train fields")
    flat_of = {(f.section, f.name): key for key, f in FLAT_FIELDS.items()}
    out = {}
    for key, value in doc.items():
        if key not in SECTIONS or not isinstance(value, dict):  # "model": "resnet18" is the flat field
            out[key] = value
            continue
        unknown = sorted(k for k in value if (key, k) not in flat_of)
        if unknown:
            raise ValueError(f"{config_path}: unknown keys {unknown} in section {key!r}")
        out.update({flat_of[key, k]: v for k, v in value.items()})
    return out


@main.command("train")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="JSON file of TrainConfig fields; command-line options override it.")
@click.option("--restart", is_flag=True,
              help="Start a new run in OUT, deleting what an earlier run left there (checkpoint, metrics, "
                   "trajectory, manifest). Without it, a run is resumed, and refused if its settings differ.")
@_config_options
def train_cmd(config_path, restart, **overrides):
    """Train a model, recording every sample's logits into OUT/trajectory.

    Runs on one process or under a launcher that sets RANK/WORLD_SIZE (torchrun -m dprune
    train, deepspeed, srun + torchrun); only rank 0 writes, and it holds OUT's lock.
    Rerunning the same command resumes from OUT/checkpoint.pt (or OUT/ds_checkpoint).  With
    --manifest it trains only on the kept samples, with corrected labels; with --prune-at T
    it prunes itself after epoch T and carries on.
    """
    from .stages import train

    run = _make_config(config_path, overrides)
    done = train(run, restart=restart)
    if done.metrics and "test_metric" in done.metrics[-1]:  # rank 0
        last = done.metrics[-1]
        click.echo(f"final test {last['metric_name']} {last['test_metric']:.4f} after {len(done.metrics)} epochs "
                   f"({done.cost:,} sample-epochs); metrics in {Path(run.train.out) / 'metrics.json'}")


# ------------------------------------------------------------------------------------- run
def _parse_sets(items) -> dict:
    from .options import coerce, parse_value, split_assignment

    fields = _train_fields()
    out = {}
    for item in items:
        key, value = split_assignment(item, "--set")
        if key not in fields:
            raise ValueError(f"--set {key}: not a 'dprune train' field (see dprune train --help)")
        out[key] = coerce(parse_value(value), fields[key][0], f"--set {key}")
    return out


@main.command("run")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for everything the run writes.")
@click.option("--task", type=click.Choice(["classification", "reid"]), default="classification", show_default=True,
              help="reid: BoT recipe on market1501 / msmt17 / veri776, evaluated by mAP and CMC.")
@click.option("--dataset", default="digits", show_default=True,
              help="Dataset name (digits needs no files); for reid: market1501, msmt17, veri776.")
@click.option("--data-root", "--root", "data_root", type=click.Path(exists=True, file_okay=False),
              help="Folder of the dataset.")
@click.option("--model", default=None, help="small_cnn, resnet18 or resnet50 [default: small_cnn; reid: resnet50].")
@click.option("--record-epochs", type=click.IntRange(min=1), default=None,
              help="T: epochs scored, the first of the run [default: E / 10, at least 1, as the paper: 12 of 120].")
@click.option("--epochs", type=click.IntRange(min=2), default=30, show_default=True, help="E: epochs of every run.")
@click.option("--ratio", type=click.FloatRange(0, 1, max_open=True), default=RUN_DEFAULTS.ratio, show_default=True,
              help="Prune ratio.")
@click.option("--method", default=RUN_DEFAULTS.method, show_default=True, help="Scorer that ranks the samples.")
@click.option("--policy", type=click.Choice(["global", "class"]), default=RUN_DEFAULTS.policy, show_default=True)
@click.option("--relabel/--no-relabel", default=RUN_DEFAULTS.relabel, show_default=True,
              help="Act on the mislabel detector.")
@click.option("--detector", type=click.Choice(DETECTORS), default=RUN_DEFAULTS.detector, show_default=True,
              help="Mislabel detector (see dprune prune --help); 'aum' records with threshold samples.")
@click.option("--mislabelled", type=click.Choice(MISLABELLED_ACTIONS), default=RUN_DEFAULTS.mislabelled,
              show_default=True, help="What a flagged sample gets: 'relabel' (the agreed label) or 'remove'.")
@click.option("--remove-outliers", type=click.FloatRange(0, 1, max_open=True), default=RUN_DEFAULTS.outliers or 0.0,
              show_default=True, help="Fraction of flattest soft labels to remove (0 = none).")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also train on the full data (recording it) and retrain from scratch on its pruned set (the "
                   "paper's protocol), for the comparison table; --no-baseline runs prune-in-run alone.")
@click.option("--controls/--no-controls", default=True, show_default=True,
              help="Also train prune-in-run's same-cost controls: random prune-in-run keeping as many samples (no "
                   "cleaning), and the full data for about as many sample-epochs (a shorter schedule). A way counts "
                   "as better only when it beats both.")
@click.option("--label-noise", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Inject symmetric label noise into the training labels (to watch the correction work).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=float, help="Peak learning rate [default: 0.05 classification, 3.5e-4 reid].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--backend", type=click.Choice(["ddp", "deepspeed"]), default="ddp", show_default=True)
@click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE",
              help="Any 'dprune train' field for every stage, winning over the options above, e.g. --set record=pass "
                   "--set store=summary --set reid_height=128.")
def run_cmd(out, record_epochs, baseline, controls, label_noise, remove_outliers, sets, **options):
    """The whole method end to end, and what each way to the pruned model costs.

    Trains the full-data baseline recording its first T epochs (OUT/full), scores and prunes
    them (OUT/manifest.json), retrains from scratch on the kept set (OUT/pruned, the paper's
    protocol), runs prune-in-run (OUT/prune-in-run) and its same-cost controls (OUT/random-in-run,
    OUT/full-same-cost).  Writes OUT/report.md (accuracy and
    cost of each way), OUT/kept.tsv (for reid also OUT/train_list.txt, "relpath pid" lines in
    the dataset's ids), plots and OUT/report.html (the samples relabelled, removed and pruned, as
    pictures; see dprune report).  Rerunning resumes; a stage whose inputs changed reruns.
    """
    from .stages import run_config, run_pipeline

    if record_epochs is None:
        record_epochs = max(1, options["epochs"] // 10)
    options.update(label_noise=label_noise, noise_kind="symmetric" if label_noise else "none",
                   noise_seed=options["seed"], remove_outliers=remove_outliers or None)
    rc = run_config(out, options, _parse_sets(sets), record_epochs=record_epochs, baseline=baseline,
                    controls=controls)
    click.echo(run_pipeline(rc))


# ---------------------------------------------------------------------------------- report
@main.command("report")
@click.argument("run_or_manifest", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Page to write [default: report.html beside the manifest].")
@click.option("--png", is_flag=True, help="Also write the galleries as PNG contact sheets beside the page.")
def report_cmd(run_or_manifest, out_path, png):
    """Write a self-contained report.html of what was pruned, relabelled and removed.

    RUN_OR_MANIFEST is a `dprune run` folder, a `dprune train --prune-at` folder or a manifest
    written by `dprune prune`.  Thumbnails come from the training set, rebuilt from the run's
    configuration; an imported trajectory is shown by sample ids.  The page opens from disk.
    """
    from .report.content import collect
    from .report.html import write_contact_sheets, write_html

    from .locking import DirLock

    content = collect(run_or_manifest)
    if out_path is not None:  # a page of one's own: never over a file of a run or store
        _check_new_output(out_path, "report")
    page = out_path or content.run_dir / "report.html"
    # The run's own page is written under the run folder's lock (refused while a run writes there).
    with DirLock(page.parent, "dprune report") if out_path is None else contextlib.nullcontext():
        write_html(content, page)
        sheets = write_contact_sheets(content, page.with_suffix("")) if png else []
    click.echo(f"report: {page} ({page.stat().st_size / 1e6:.2f} MB)")
    for note in content.notes:
        click.echo(f"note: {note}")
    if sheets:
        click.echo("contact sheets: " + ", ".join(str(p) for p in sheets))


# ----------------------------------------------------------------------------------- synth
@main.command("synth")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--samples", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--classes", type=click.IntRange(min=2), default=10, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=12, show_default=True)
@click.option("--noise", type=click.FloatRange(0, 1), default=0.1, show_default=True, help="Fraction of wrong labels.")
@click.option("--seed", type=int, default=0, show_default=True)
def synth_cmd(out, samples, classes, epochs, noise, seed):
    """Write a synthetic trajectory .npz (logits, counts, labels, true_labels) to try the tool on."""
    from .synthetic import synthetic_trajectory

    t = synthetic_trajectory(samples, classes, epochs, noise_rate=noise, seed=seed)
    np.savez(out, **t)
    click.echo(f"wrote {out}: logits {t['logits'].shape}, {int((t['labels'] != t['true_labels']).sum())} wrong labels")


@main.command("synth-reid")
@click.argument("root", type=click.Path(file_okay=False, path_type=Path))
@click.option("--layout", type=click.Choice(["market1501", "msmt17_v1", "msmt17_v2", "veri776"]), default="market1501",
              show_default=True, help="Folder layout and file naming of the real dataset to imitate.")
@click.option("--ids", type=click.IntRange(min=4), default=24, show_default=True, help="Identities (half train, half test).")
@click.option("--images-per-id", type=click.IntRange(min=2), default=8, show_default=True)
@click.option("--cams", type=click.IntRange(min=2), default=4, show_default=True)
@click.option("--noise", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Fraction of training images filed under a wrong identity (listed in _synthetic_truth.json).")
@click.option("--hardness", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="0: every image of an identity looks alike (easy); up to 1: identities look more alike and "
                   "images vary in brightness, position and noise, some occluded.")
@click.option("--seed", type=int, default=0, show_default=True)
def synth_reid_cmd(root, layout, ids, images_per_id, cams, noise, hardness, seed):
    """Write a small synthetic ReID dataset in a real layout (with junk images, distractors and wrong labels)."""
    from .data.reid_synth import make_synthetic_reid

    info = make_synthetic_reid(root, layout, n_ids=ids, images_per_id=images_per_id, n_cams=cams, noise_rate=noise,
                               hardness=hardness, seed=seed)
    click.echo(f"wrote a {layout} layout under {Path(root) / info['dataset_dir']} "
               f"({len(info['mislabelled'])} mislabelled training images; truth in {Path(root) / '_synthetic_truth.json'})")


def _register_commands() -> None:
    """Commands that live beside their subsystems: ReID evaluation."""
    from .evaluate.reid_cli import eval_reid

    main.add_command(eval_reid)


_register_commands()

if __name__ == "__main__":
    sys.exit(main())
