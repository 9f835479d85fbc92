"""The ``dprune`` command line.  Each stage reads the files of the one before.

    dprune import SRC -o RUN_DIR          trajectory from .npz/.npy or TDDS/DUAL files
    dprune score RUN_DIR                  -> RUN_DIR/scores.npz
    dprune prune RUN_DIR --ratio 0.3      -> manifest.json + manifest.npz
    dprune inspect RUN_DIR                what the store holds
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from . import __version__
from .store import StoreError, TrajectoryStore


class _Group(click.Group):
    """Turns the library's ``ValueError`` (bad input) into a one-line message and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ValueError, StoreError, FileNotFoundError) as e:
            raise click.ClickException(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dprune")
def main():
    """Training-dynamics data pruning (arXiv 2412.10091, "Data Pruning Can Do More").

    Record every training sample's logits for a few epochs, score each sample by the entropy
    of its averaged soft label, then prune the easiest samples, relabel the ones whose soft
    label disagrees with their label, remove flat-label outliers, and retrain on the rest.

    Each stage writes files the next one reads, so any stage can be rerun alone.
    """


def _parse_params(items: tuple[str, ...]) -> dict:
    """``("tdds.window=5", "random.seed=3")`` -> ``{"tdds": {"window": 5}, "random": {"seed": 3}}``."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        name, dot, opt = key.partition(".")
        if not sep or not dot:
            raise ValueError(f"--param expects NAME.OPTION=VALUE, got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(name, {})[opt] = parsed
    return out


def _open_store(run_dir):
    """The full or summary store in ``run_dir``, read-only."""
    from .summary_store import open_store

    return open_store(run_dir, "r")


# ---------------------------------------------------------------------------------- import
@main.command("import")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Run directory to create (the trajectory store).")
@click.option("--format", "fmt", type=click.Choice(["auto", "arrays", "tdds"]), default="auto", show_default=True,
              help="'arrays': an .npz/.npy with logits [E,N,C] (+counts [E,N], labels [N]) or a folder of "
                   "logits.npy/counts.npy/labels.npy; 'tdds': a folder of TDDS/DUAL {e}_Output.npy + {e}_Index.npy; "
                   "'auto' picks 'tdds' when 0_Output.npy exists.")
@click.option("--labels", "labels_path", type=click.Path(exists=True, path_type=Path),
              help="labels [N] as .npy (required for tdds; overrides labels in the arrays).")
@click.option("--sample-ids", "ids_path", type=click.Path(exists=True, path_type=Path),
              help="Text file with one sample id (e.g. image path) per line, N lines.")
@click.option("--num-samples", type=int, help="N for tdds imports when it exceeds len(labels) is not wanted; default len(labels).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Storage precision of the logits.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store in OUT.")
def import_cmd(src, out_dir, fmt, labels_path, ids_path, num_samples, dtype, overwrite):
    """Import a trajectory recorded by another tool into a dprune run directory."""
    from .importers import import_arrays, import_tdds

    labels = np.load(labels_path, allow_pickle=False) if labels_path else None
    ids = ids_path.read_text(encoding="utf-8").splitlines() if ids_path else None
    if fmt == "auto":
        fmt = "tdds" if (src.is_dir() and (src / "0_Output.npy").exists()) else "arrays"
    if fmt == "tdds":
        if labels is None:
            raise ValueError("TDDS/DUAL folders hold no labels: pass --labels labels.npy")
        store = import_tdds(src, out_dir, labels=labels, n_samples=num_samples, dtype=dtype, sample_ids=ids,
                            progress=True, overwrite=overwrite)
    else:
        store = import_arrays(src, out_dir, labels=labels, dtype=dtype, sample_ids=ids, progress=True, overwrite=overwrite)
    click.echo(f"imported {store.epochs_completed} epochs x {store.n_samples} samples x {store.n_classes} classes "
               f"({store.dtype.name}) into {out_dir}")


# ----------------------------------------------------------------------------------- score
FIRST_EPOCHS_HELP = ("Use only the first K completed epochs, as if the run had stopped there (the paper scores "
                     "the first 12 epochs of a 120-epoch schedule). Default: every completed epoch.")


def compute_and_save_scores(run_dir: Path, methods, params, backend="auto", chunk_size=None, quiet=False,
                            first_epochs=None):
    from .scoring import save_scores, score_store

    store = _open_store(run_dir)
    scores, ran = score_store(store, methods=methods, params=params, backend=backend, chunk_size=chunk_size,
                              progress=not quiet, first_epochs=first_epochs)
    save_scores(run_dir / "scores.npz", scores, fingerprint=store.fingerprint,
                epochs=first_epochs or store.epochs_completed, methods=[m for m in scores if m in _methods()], params=params)
    return store, scores, ran


def _methods():
    from .scoring import METHODS

    return METHODS


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
                   "loss_mean, random; or 'all'.")
@click.option("--param", "params", multiple=True, metavar="NAME.OPTION=VALUE",
              help="Scorer/flag parameter, repeatable: tdds.window=10, tdds.decay=0.9, dyn_unc.window=10, "
                   "el2n.epoch=-1, random.seed=0, mislabel.min_confidence=0.5, outlier.entropy_threshold=0.9, "
                   "outlier.margin_threshold=0.1.")
@click.option("--backend", type=click.Choice(["auto", "torch", "triton", "numba"]), default="auto", show_default=True,
              help="Implementation of the scoring pass: 'auto' = Triton on a GPU, the numba kernel on a CPU; "
                   "'torch' = the plain torch reference (slow).")
@click.option("--chunk-size", type=click.IntRange(min=1), help="Samples per streamed chunk (default: ~64 MB of fp32).")
@click.option("--first-epochs", type=click.IntRange(min=1), help=FIRST_EPOCHS_HELP)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
def score_cmd(run_dir, methods, params, backend, chunk_size, first_epochs, quiet):
    """Score every sample of RUN_DIR's trajectory; write RUN_DIR/scores.npz.

    The file holds one float32 array [N] per scorer (higher = more important, NaN = no score)
    and the flags soft_argmax, p_label, p_max, margin, mislabel, outlier, nonfinite,
    n_observed.  Load it with numpy.load(RUN_DIR / "scores.npz").
    """
    from .scoring import check_methods

    methods = check_methods(methods)
    store, scores, ran = compute_and_save_scores(run_dir, methods, _parse_params(params), backend, chunk_size, quiet,
                                                 first_epochs)
    if not quiet:
        click.echo(f"scored {store.n_samples} samples over {first_epochs or store.epochs_completed} epochs with the "
                   f"{ran} backend -> {run_dir / 'scores.npz'}")
        click.echo("\n".join(_summary_lines(scores, methods)))


# ----------------------------------------------------------------------------------- prune
def _scores_for(run_dir: Path, store: TrajectoryStore, method: str, params: dict, need_entropy: bool, quiet: bool,
                first_epochs: int | None):
    """Reuse RUN_DIR/scores.npz when it is current (same data, epochs and parameters), else rescore."""
    from .scoring import load_scores
    from .scoring import merge_params

    path = run_dir / "scores.npz"
    if path.exists():
        try:
            scores, meta = load_scores(path, fingerprint=store.fingerprint)
        except ValueError:
            scores, meta = {}, {}
        wanted = [method] + (["entropy"] if need_entropy else [])
        if (all(m in scores for m in wanted) and meta.get("epochs_used") == (first_epochs or store.epochs_completed)
                and meta.get("params") == merge_params(params)):
            return scores
    methods = list(dict.fromkeys([method, "entropy"] if need_entropy else [method]))
    return compute_and_save_scores(run_dir, methods, params, quiet=quiet, first_epochs=first_epochs)[1]


@main.command("prune")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-r", "--ratio", type=float, required=True,
              help="Fraction of observed samples to prune by score, in [0, 1). Exactly round(ratio * N_observed) go.")
@click.option("-m", "--method", default="entropy", show_default=True,
              help="Scorer that ranks samples (lowest scores are pruned).")
@click.option("--policy", type=click.Choice(["global", "class"]), default="global", show_default=True,
              help="'global' ranks all samples together; 'class' prunes each class in proportion and never empties one.")
@click.option("--relabel/--no-relabel", default=False, show_default=True,
              help="Give samples whose soft label confidently disagrees with their label the soft label's class, and keep them.")
@click.option("--relabel-confidence", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Soft-label probability of the new class needed to relabel.")
@click.option("--remove-outliers", "outlier_fraction", type=click.FloatRange(0, 1, max_open=True),
              help="Also remove this fraction of observed samples with the flattest soft labels.")
@click.option("--outlier-threshold", type=click.FloatRange(0, 1),
              help="Instead of a fraction: remove samples with entropy/log(C) >= this and margin <= --outlier-margin.")
@click.option("--outlier-margin", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Top-1 minus top-2 soft-label probability at or below which a high-entropy sample is an outlier.")
@click.option("--param", "params", multiple=True, metavar="NAME.OPTION=VALUE", help="Scorer parameter (see 'dprune score').")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for breaking score ties.")
@click.option("--first-epochs", type=click.IntRange(min=1), help=FIRST_EPOCHS_HELP)
@click.option("-o", "--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=Path("manifest.json"),
              show_default=True, help="Manifest path; the same arrays go to the .npz beside it.")
@click.option("--export-list", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the kept samples as 'index<TAB>sample_id<TAB>label' lines.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
def prune_cmd(run_dir, ratio, method, policy, relabel, relabel_confidence, outlier_fraction, outlier_threshold,
              outlier_margin, params, seed, first_epochs, out_path, export_list, quiet):
    """Select the samples to keep from RUN_DIR's scores; write a pruning manifest.

    Unobserved samples are kept and listed; samples with non-finite logits are pruned first;
    outliers are removed on top of the pruned ratio.  Scores are taken from RUN_DIR/scores.npz
    when it is current, else computed.
    """
    from .scoring import check_methods
    from .select import _check_ratio, export_list as write_list, load_manifest, select, write_manifest

    _check_ratio(ratio)
    check_methods([method])
    params = _parse_params(params)
    store = _open_store(run_dir)
    need_entropy = outlier_fraction is not None or outlier_threshold is not None
    scores = _scores_for(run_dir, store, method, params, need_entropy, quiet, first_epochs)
    sel = select(scores, store.labels, store.n_classes, method=method, ratio=ratio, policy=policy, relabel=relabel,
                 relabel_min_confidence=relabel_confidence, outlier_fraction=outlier_fraction,
                 outlier_entropy_threshold=outlier_threshold, outlier_margin_threshold=outlier_margin, seed=seed)
    m = write_manifest(out_path, sel, source_run=str(run_dir.resolve()), fingerprint=store.fingerprint,
                       n_classes=store.n_classes, scorer_params=params)
    if export_list:
        write_list(load_manifest(out_path, fingerprint=store.fingerprint), store.sample_ids, export_list)
    if not quiet:
        click.echo(f"{m['n_observed']} observed samples: pruned {m['n_pruned']} ({m['ratio_achieved']:.2%}) by {method}, "
                   f"removed {m['n_outliers']} outliers, relabelled {len(m['relabelled'])}, kept {m['n_kept']} "
                   f"(unobserved kept: {len(m['unobserved'])}, unscored kept: {len(m['unscored'])})")
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
    from .scoring import load_scores

    store = _open_store(run_dir)
    E = store.epochs_completed
    info = {
        "run_dir": str(run_dir), "n_samples": store.n_samples, "n_classes": store.n_classes,
        "dtype": store.dtype.name, "epochs_completed": E, "epochs_planned": store.meta.get("epochs_planned"),
        "bytes": store.nbytes(), "fingerprint": store.fingerprint["sha256"][:16],
        "world_size": store.meta.get("world_size"), "command": store.meta.get("command"),
    }
    if E:
        counts = store.counts()
        seen = counts > 0
        info["coverage_per_epoch"] = seen.mean(1).round(4).tolist()
        info["never_observed"] = int((~seen.any(0)).sum())
        info["mean_observations_per_epoch"] = round(float(counts.sum(0).mean() / E), 4)
    scores_path = run_dir / "scores.npz"
    if scores_path.exists():
        try:
            scores, meta = load_scores(scores_path, fingerprint=store.fingerprint)
            info["scores"] = {"epochs_used": meta["epochs_used"], "methods": meta["methods"],
                              "summary": _summary_lines(scores, meta["methods"])}
        except ValueError as e:
            info["scores"] = {"error": str(e)}
    if as_json:
        click.echo(json.dumps(info))
        return
    click.echo(f"{run_dir}: {store.n_samples} samples x {store.n_classes} classes, {store.dtype.name}, "
               f"{E}/{info['epochs_planned']} epochs complete ({store.nbytes() / 1e6:.1f} MB of logits)")
    click.echo(f"fingerprint {info['fingerprint']}, world size {info['world_size']}")
    if E:
        cov = info["coverage_per_epoch"]
        click.echo(f"coverage per epoch: min {min(cov):.2%}, max {max(cov):.2%}; never observed: "
                   f"{info['never_observed']}; observations per sample per epoch: {info['mean_observations_per_epoch']}")
    if "scores" in info:
        if "error" in info["scores"]:
            click.echo(f"scores.npz: {info['scores']['error']}")
        else:
            click.echo(f"scores.npz (from {info['scores']['epochs_used']} epochs):")
            click.echo("\n".join("  " + line for line in info["scores"]["summary"]))


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
    """Commands that live beside their subsystems: training, the pipeline, ReID evaluation."""
    from .evaluate.reid_cli import eval_reid
    from .train.cli import run_cmd, train_cmd

    for cmd in (train_cmd, run_cmd, eval_reid):
        main.add_command(cmd)


_register_commands()

if __name__ == "__main__":
    sys.exit(main())
