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
import dataclasses
import errno
import os
import sys
import typing
from pathlib import Path

import click
import numpy as np

from . import __version__
from .cli_options import check_new_output, param_option, spec_options
from .data.reid_synth import LAYOUTS
from .select import RUN_DEFAULTS
from .train.config import BACKENDS as TRAIN_BACKENDS
from .train.config import TASKS


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


# ----------------------------------------------------------------------------------- train
_PRUNE_AT_HELP = ("Prune inside this run: after epoch T, score the first T recorded epochs, write OUT/manifest.json "
                  "and continue epochs T+1.. on the kept samples with the corrected labels, same model, optimizer "
                  "and schedule.")


def _train_fields() -> dict:
    """``name -> (type, help, default)`` of every ``dprune train`` option: TrainConfig's flat fields
    (:data:`dprune.train.config.FLAT_FIELDS`), then --prune-at and the selection it makes, generated
    from :class:`~dprune.select.PruneSpec`'s fields (defaults :data:`~dprune.select.RUN_DEFAULTS`)."""
    from .runs import SELECTION_OPTIONS
    from .select import RUN_DEFAULTS, PruneSpec
    from .train.config import FLAT_FIELDS

    out = {name: (f.type, f.help, f.default) for name, f in FLAT_FIELDS.items()}
    out["prune_at"] = (typing.Optional[int], _PRUNE_AT_HELP, None)
    spec_fields = {f.name: f for f in dataclasses.fields(PruneSpec)}
    hints = typing.get_type_hints(PruneSpec)
    for name, field in SELECTION_OPTIONS.items():
        typ = hints[field] if hints[field] in (bool, int, float, str) else str  # text parsed by runs.selection
        out[name] = (typ, spec_fields[field].metadata["help"] + " (With --prune-at.)", getattr(RUN_DEFAULTS, field))
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


def _make_config(config_path, overrides: dict, params=()):
    """The run (:class:`dprune.runs.TrainRun`) from an optional JSON file of ``dprune train`` fields
    (flat, or in TrainConfig's sections: ``{"optim": {"lr": 0.1}}``; values type-checked) and
    command-line options (which win); ``params``: ``--param NAME.OPTION=VALUE`` items for the
    scoring of prune-in-run."""
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
    from .scoring import parse_params

    return TrainRun(cfg, None if prune_at is None else selection(picked, cfg.seed), prune_at,
                    parse_params(params, given_only=True))


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
@param_option
def train_cmd(config_path, restart, params, **overrides):
    """Train a model, recording every sample's logits into OUT/trajectory.

    Runs on one process or under a launcher that sets RANK/WORLD_SIZE (torchrun -m dprune
    train, deepspeed, srun + torchrun); only rank 0 writes, and it holds OUT's lock.
    Rerunning the same command resumes from OUT/checkpoint.pt (or OUT/ds_checkpoint).  With
    --manifest it trains only on the kept samples, with corrected labels; with --prune-at T
    it prunes itself after epoch T and carries on.
    """
    from .stages import train

    run = _make_config(config_path, overrides, params)
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
@click.option("--task", type=click.Choice(TASKS), default="classification", show_default=True,
              help="reid: BoT recipe on market1501 / msmt17 / veri776, evaluated by mAP and CMC.")


@click.option("--dataset", default="digits", show_default=True,
              help="Dataset name (digits needs no files); for reid: market1501, msmt17, veri776.")


@click.option("--data-root", "--root", "data_root", type=click.Path(exists=True, file_okay=False),
              help="Folder of the dataset.")


@click.option("--model", default=None, help="small_cnn, resnet18 or resnet50 [default: small_cnn; reid: resnet50].")
@click.option("--record-epochs", type=click.IntRange(min=1), default=None,
              help="T: epochs scored, the first of the run [default: E / 10, at least 1, as the paper: 12 of 120].")


@click.option("--epochs", type=click.IntRange(min=2), default=30, show_default=True, help="E: epochs of every run.")
@spec_options(RUN_DEFAULTS, skip=("seed",))  # the selection's seed is the run's --seed
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
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds training, the injected label noise and the selection's tie-break.")


@click.option("--backend", type=click.Choice(TRAIN_BACKENDS), default="ddp", show_default=True)
@click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE",
              help="Any 'dprune train' field for every stage, winning over the options above, e.g. --set record=pass "
                   "--set store=summary --set reid_height=128.")


@param_option
def run_cmd(out, spec, record_epochs, baseline, controls, label_noise, sets, params, **options):
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
                   noise_seed=options["seed"])
    rc = run_config(out, options, _parse_sets(sets), spec=spec, record_epochs=record_epochs, baseline=baseline,
                    controls=controls, params=params)
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
        check_new_output(out_path, "report")
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
@click.option("--layout", type=click.Choice(LAYOUTS), default="market1501",
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
    """Commands that live beside their subsystems: the store's (import, score, prune, inspect,
    check-labels), ReID evaluation."""
    from .cli_store import check_labels_cmd, import_cmd, inspect_cmd, prune_cmd, score_cmd
    from .evaluate.reid_cli import eval_reid

    for command in (import_cmd, score_cmd, prune_cmd, inspect_cmd, check_labels_cmd, eval_reid):
        main.add_command(command)


_register_commands()

if __name__ == "__main__":
    sys.exit(main())
