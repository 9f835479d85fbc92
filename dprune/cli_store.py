"""The ``dprune`` commands that work on a trajectory store: import, score, prune, inspect.

Registered in the ``dprune`` group by :mod:`dprune.cli` (its error funnel applies).
"""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from .cli_options import FIRST_EPOCHS_HELP, SIZE, check_new_output, param_option, spec_options
from .scoring.api import FLAG_METHODS, METHODS
from .scoring.backends import BACKENDS as SCORING_BACKENDS
from .select import RUN_DEFAULTS, PruneSpec
from .store import DTYPES


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


# ---------------------------------------------------------------------------------- import
@click.command("import")
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
@click.option("--dtype", type=click.Choice(tuple(DTYPES)), default="float16", show_default=True,
              help="Storage precision of the logits (float16 refuses finite values beyond +-65504).")


@click.option("--overwrite", is_flag=True, help="Replace an existing store in OUT.")
@click.option("--max-size", type=SIZE, default=None,
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


@click.command("score")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-m", "--method", "methods", default=",".join(RUN_DEFAULTS.methods_needed()), show_default=True,
              help=f"Comma-separated scorers: {', '.join(METHODS)}, and the detector {', '.join(FLAG_METHODS)}; or "
                   "'all'.  The default is what `dprune run`'s default selection reads.")


@param_option
@click.option("--backend", type=click.Choice(SCORING_BACKENDS), default="auto", show_default=True,
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
@click.command("prune")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@spec_options(PruneSpec(), required=("ratio",))
@param_option
@click.option("--first-epochs", type=click.IntRange(min=1), help=FIRST_EPOCHS_HELP)
@click.option("-o", "--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=Path("manifest.json"),
              show_default=True, help="Manifest path; the same arrays go to the .npz beside it.")


@click.option("--export-list", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the kept samples as 'index<TAB>sample_id<TAB>label' lines.")


@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
def prune_cmd(run_dir, spec, params, first_epochs, out_path, export_list, quiet):
    """Select the samples to keep from RUN_DIR's scores; write a pruning manifest.

    Unobserved samples are kept and listed; samples with non-finite logits are pruned first;
    mislabelled samples and outliers are removed on top of the pruned ratio (--budget score) or
    inside it (--budget total).  Scores are taken from RUN_DIR/scores.npz
    when it is current (same trajectory epochs, methods and parameters), else computed.
    """
    from .manifest import export_list as write_list
    from .pruning import prune_store
    from .scoring import check_methods, parse_params
    check_methods([spec.method])
    params = parse_params(params)
    check_new_output(out_path, "manifest")
    if export_list:
        check_new_output(export_list, "--export-list", not_same_as=[out_path])
    store = _open_store(run_dir)
    done = prune_store(store, spec, out_path, params=params, first_epochs=first_epochs, progress=not quiet)
    if export_list:
        write_list(done.manifest, store.sample_ids, export_list)
    m = done.manifest.data
    if not quiet:
        click.echo(f"{m['n_observed']} observed samples: pruned {m['n_pruned']} ({m['ratio_achieved']:.2%}) by "
                   f"{spec.method}, removed {m['n_outliers']}, relabelled {len(m['relabelled'])}, kept {m['n_kept']} "
                   f"(unobserved kept: {len(m['unobserved'])}, unscored kept: {len(m['unscored'])}); scores "
                   + ("reused" if done.scored_with is None else f"computed ({done.scored_with})"))
        if m["emptied_classes"]:
            click.echo(f"warning: classes emptied by global pruning: {m['emptied_classes']}", err=True)
        click.echo(f"manifest: {out_path} (+ {out_path.with_suffix('.npz').name})"
                   + (f"; list: {export_list}" if export_list else ""))


# --------------------------------------------------------------------------------- inspect
@click.command("inspect")
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


# ---------------------------------------------------------------------------- check-labels
def _check_images(run_dir: Path, store):
    """The training images of ``store`` for the sheet's page, or (None, why not)."""
    from .report.images import open_images, training_config

    images, why = open_images(*training_config(Path(run_dir), _store_dir(Path(run_dir))), store.sample_ids)
    return images, None if images is not None else f"No pictures: {why}. The tiles show sample ids only."


@click.command("check-labels")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--draw", type=click.IntRange(min=1), metavar="M",
              help="Write a sheet of M samples drawn uniformly (the sample to check by hand) to --out.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the draw.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), help="The sheet to write (.csv).")
@click.option("--checked", "sheet", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A filled sheet: print the share of wrong labels and the detector parameter it gives.")
def check_labels_cmd(run_dir, draw, seed, out_path, sheet):
    """Measure the noise rate of RUN_DIR's labels on a sample checked by hand.

    First `--draw 500 --out sheet.csv` writes 500 uniformly drawn samples (sample_id,
    given_label, checked_label) and sheet.html, their pictures in the sheet's order with the
    class names; a person fills checked_label with the class each image really shows (rows left
    empty are not counted).  Then `--checked sheet.csv` prints the share of
    wrong labels with its 95% interval, and `--param confident.rate=R` for `dprune score`,
    `prune`, `run` and `train --prune-at`: the detector then flags that share of the samples it
    judges (observed, finite, not threshold samples), those with the lowest label margin.  Why:
    a count read off the run's own probabilities misses flips that look like their new class
    (benchmarks/RESULTS.md); a checked sample does not.
    """
    from .checked import draw_sample, read_sheet, write_sheet, wrong_rate
    from .fileio import atomic_write_text
    from .report.html import render_check_page
    from .threshold import data_labels

    if (draw is None) == (sheet is None):
        raise click.UsageError("give one of --draw M (with --out) or --checked SHEET")
    if sheet is not None and (out_path is not None or seed):
        raise click.UsageError("--out and --seed go with --draw, not --checked")
    store = _open_store(run_dir)
    # The dataset's labels: threshold samples, recorded in a fake class, get theirs back.
    labels, n_classes, _ = data_labels(store)
    if draw is not None:
        if out_path is None:
            raise click.UsageError("--draw needs --out SHEET.csv")
        if out_path.suffix.lower() == ".html":
            raise ValueError(f"--out {out_path} is the CSV sheet (its pictures go beside it as .html): "
                             "give a name ending in .csv")
        page = out_path.with_suffix(".html")
        for path, what in ((out_path, "sheet"), (page, "sheet's page")):
            check_new_output(path, what)  # never over a run's own files
            if path.exists():  # nor over a sheet someone may have filled
                raise ValueError(f"{what} {path} exists; choose another name (or delete it)")
        idx = draw_sample(store.n_samples, draw, seed)
        html = render_check_page(store.sample_ids, labels, idx, *_check_images(run_dir, store))
        write_sheet(out_path, store.sample_ids, labels, idx)
        try:
            atomic_write_text(page, html)
        except BaseException:  # no sheet without its page: a rerun would be refused
            out_path.unlink(missing_ok=True)
            raise
        click.echo(f"wrote {draw} samples to check -> {out_path} (their pictures: {page}); fill checked_label, "
                   f"then dprune check-labels {run_dir} --checked {out_path}")
        return
    given, checked = read_sheet(sheet, store.sample_ids, labels, n_classes)
    rate, lo, hi = wrong_rate(given, checked)
    click.echo(f"{len(given)} labels checked, {int((given != checked).sum())} wrong: rate {rate:.3f} "
               f"(95% interval {lo:.3f}-{hi:.3f})")
    click.echo(f"use: --param confident.rate={rate:.4f}")
