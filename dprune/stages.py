"""Where the stages meet: train (recording), prune, retrain, prune inside a run, report.

``dprune train``, ``dprune run`` and the benchmarks run training through :func:`train`, and
prune through :func:`dprune.pruning.prune_store`; each stage knows whether its outputs are
current from what it was given:

* a training stage is current when its run directory holds a checkpoint of the same
  configuration (fields, and the content of its manifest) with every epoch done; a
  checkpoint of another configuration is refused by ``dprune train`` (naming the fields)
  and, in a pipeline (``rerun_if_changed=True``), the stage starts over;
* scores are current while the store's epochs they were made from are unchanged and the
  methods and parameters are the same (:func:`dprune.scoring.scores_status`);
* a manifest is rewritten from current scores every time (cheap); a retraining stage
  compares the manifest's content, not its file.

``dprune run`` (:func:`run_pipeline`) measures what users pay for the pruned model, in
sample-epochs and wall time, three ways:

1. **full**: the full-data baseline, trained once *with recording* of its first T epochs;
2. **paper protocol**: the first T epochs of that run scored and pruned, then a retraining
   from scratch on the kept samples with the corrected labels for the same E epochs
   (the recording is free when a baseline is trained anyway);
3. **prune-in-run**: one run that records T epochs, prunes, and carries on (``--prune-at``);
   no second run at all.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .fileio import atomic_write_json, atomic_write_text, read_npz
from .manifest import export_list
from .pruning import load_store_manifest, prune_store
from .report.html import write_html_report
from .runs import SELECTION_OPTIONS, TrainRun, selection
from .scoring import parse_params
from .select import PruneSpec
from .store import open_store
from .train.checkpoint import CHECKPOINT_FORMAT, CheckpointError, config_changes, run_identity
from .train.config import TrainConfig


@dataclass
class Trained:
    """A finished training stage."""

    config: TrainRun
    metrics: list[dict]
    seconds: float
    """Wall time of the epochs (sum over its metrics; resumed runs count every epoch once)."""

    @property
    def cost(self) -> int:
        """Sample-epochs: training samples the optimiser processed."""
        return int(sum(m["samples_seen"] for m in self.metrics))


def _checkpoint(cfg: TrainConfig) -> dict | None:
    """The checkpoint in ``cfg.out``, read without taking its lock; None if there is none or it is
    not readable here (the trainer then says why).  DeepSpeed runs are not read (their
    checkpoint is a folder per rank)."""
    import torch

    from .rundir import CHECKPOINT

    path = Path(cfg.out) / CHECKPOINT
    if cfg.distributed.backend != "ddp" or not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    return ckpt if isinstance(ckpt, dict) else None


def finished(run: TrainRun, ckpt: dict | None) -> Trained | None:
    """The finished run of ``run`` in its checkpoint ``ckpt`` (see :func:`_checkpoint`); None if not finished.

    Finished: a checkpoint of the same configuration (and manifest content) with every epoch done.
    """
    from .manifest import manifest_digest

    cfg = run.train
    if ckpt is None or ckpt.get("epochs_done") != cfg.epochs or ckpt.get("format") != CHECKPOINT_FORMAT:
        return None
    saved = ckpt.get("config", {})
    if config_changes(saved, run_identity(cfg, run.hook)) or saved.get("epochs") != cfg.epochs:
        return None
    if cfg.data.manifest and ckpt.get("manifest_digest") != manifest_digest(cfg.data.manifest):
        return None
    metrics = list(ckpt["metrics"])
    return Trained(run, metrics, float(sum(m["seconds"] for m in metrics)))


def train(run: TrainRun | TrainConfig, *, restart: bool = False, rerun_if_changed: bool = False) -> Trained:
    """Train (resuming a killed run, returning a finished one as it is); see the module docstring.

    A plain :class:`TrainConfig` is a run without prune-in-run.

    ``rerun_if_changed``: a pipeline stage whose checkpoint has another configuration starts
    over, and so does one planned for another number of epochs (``dprune train`` may extend
    a run; a pipeline compares runs of one schedule, which the cosine depends on).
    """
    run = TrainRun(run) if isinstance(run, TrainConfig) else run
    ckpt = None if restart else _checkpoint(run.train)
    done = finished(run, ckpt)
    if done is not None:
        return done
    if rerun_if_changed and ckpt is not None and ckpt.get("config", {}).get("epochs") != run.train.epochs:
        restart = True
    try:
        metrics = run.trainer(restart=restart).fit()
    except CheckpointError:
        if not rerun_if_changed or restart:
            raise
        metrics = run.trainer(restart=True).fit()
    return Trained(run, metrics, float(sum(m["seconds"] for m in metrics)))


# ----------------------------------------------------------------------------------- dprune run
# TrainConfig fields each pipeline stage sets itself; --set cannot override them.
RUN_OWNED = {
    "out": "each stage has its own folder under --out",
    "manifest": "the pipeline writes and uses its own manifest",
    "prune_at": "use --record-epochs (T)",
    "record_epochs": "use --record-epochs (T)",
    "frozen": "the pipeline trains",
}


@dataclass
class RunConfig:
    """``dprune run``: a base training configuration and the pipeline's own choices."""

    out: Path
    base: TrainConfig
    """Every stage's training configuration before the stage sets its owned fields."""
    spec: PruneSpec
    """The selection of the paper protocol and of prune-in-run."""
    record_epochs: int
    baseline: bool = True
    controls: bool = True
    """Also train the same-cost controls: random prune-in-run keeping as many samples, and the
    full data for as many sample-epochs as prune-in-run cost (a shorter schedule)."""
    params: dict = field(default_factory=dict)
    """Scoring parameters of the selection (``--param``; none: the defaults)."""


def run_config(out, options: dict, sets: dict, *, spec: PruneSpec | None = None, record_epochs: int,
               baseline: bool = True, controls: bool = True, params=()) -> RunConfig:
    """Map ``dprune run``'s options and ``--set FIELD=VALUE`` onto one :class:`TrainConfig` and the selection.

    ``options`` are TrainConfig fields and ``spec`` the selection (default
    :data:`~dprune.select.RUN_DEFAULTS`; its seed becomes the training seed); ``sets`` win over
    both (selection fields by their option names, :data:`SELECTION_OPTIONS`); ``params`` are
    ``--param NAME.OPTION=VALUE`` items for the scoring the selection reads.
    Fields the stages own (:data:`RUN_OWNED`) are refused in ``sets``.  Everything is
    validated here, before any stage runs.
    """
    owned = sorted(set(sets) & set(RUN_OWNED))
    if owned:
        raise ValueError("; ".join(f"--set {k}: set by dprune run ({RUN_OWNED[k]})" for k in owned))
    given = {} if spec is None else {k: getattr(spec, f) for k, f in SELECTION_OPTIONS.items()}
    values = {**given, **{k: v for k, v in options.items() if v is not None}, **sets}
    picked = {k: values.pop(k) for k in list(values) if k in SELECTION_OPTIONS}
    if values.get("task") == "reid" and "model" not in values:
        values["model"] = "resnet50"
    if picked.get("detector") == "aum" and picked.get("relabel", True):
        values["threshold_samples"] = True  # the recording runs set the AUM threshold with them
    base = TrainConfig.of(out=str(Path(out) / "full"), **values)
    if not 1 <= record_epochs < base.epochs:
        raise ValueError(f"--record-epochs must be in [1, --epochs) = [1, {base.epochs}), got {record_epochs}")
    rc = RunConfig(Path(out), base, selection(picked, base.seed), record_epochs, baseline, controls,
                   parse_params(params, given_only=True))
    _stage(rc, "prune-in-run", prune=rc.spec, record_epochs=record_epochs)  # validates the selection now
    return rc


def _stage(rc: RunConfig, name: str, *, prune: PruneSpec | None = None, **fields) -> TrainRun:
    """Stage ``name``'s run: prune-in-run at T with ``prune``, if given."""
    cfg = rc.base.replace(out=str(rc.out / name), **fields)
    return TrainRun(cfg, prune, None if prune is None else rc.record_epochs, rc.params if prune else {})


def _summary(t: Trained) -> dict:
    last = t.metrics[-1]
    out = {"final": last["test_metric"], "best": max(m["test_metric"] for m in t.metrics)}
    out.update({k: last[k] for k in ("mAP", "rank1", "rank5", "rank10", "mINP") if k in last})
    return out


def _say(rc: RunConfig, msg: str) -> None:
    if rc.base.progress:
        print(msg, flush=True)


def run_pipeline(rc: RunConfig) -> str:
    """Run every stage of ``dprune run``; return the report text (also OUT/report.md).

    The pipeline holds OUT's lock from before its first write to the report: a second
    ``dprune run --out OUT`` is refused, naming the holder.
    """
    from .locking import DirLock

    with DirLock(rc.out, "dprune run"):
        return _run_pipeline(rc)


def _run_pipeline(rc: RunConfig) -> str:
    out, T, E = rc.out, rc.record_epochs, rc.base.epochs
    atomic_write_json(out / "pipeline.json", {"base": rc.base.flat(), "selection": rc.spec.to_dict(),
                                              "params": rc.params, "record_epochs": T, "baseline": rc.baseline,
                                              "controls": rc.controls})
    spec = rc.spec
    steps = (4 if rc.baseline else 1) + (2 if rc.controls else 0)
    step = iter(range(1, steps + 1))
    full = paper = select_s = None
    manifest_path = out / "manifest.json"
    if rc.baseline:
        _say(rc, f"[{next(step)}/{steps}] full data: {E} epochs of {rc.base.model.name} on {rc.base.data.dataset}, "
                 f"recording the first {T}")
        full = train(_stage(rc, "full", record_epochs=T), rerun_if_changed=True)
        store = open_store(out / "full" / "trajectory")
        _say(rc, f"[{next(step)}/{steps}] scoring the first {T} epochs and selecting ({spec.describe()})")
        t0 = time.perf_counter()
        kept = len(prune_store(store, spec, manifest_path, params=rc.params, first_epochs=T,
                               progress=rc.base.progress).selection.kept)
        select_s = time.perf_counter() - t0
        _say(rc, f"[{next(step)}/{steps}] paper protocol: retraining from scratch on the {kept} kept "
                 f"samples for {E} epochs")
        paper = train(_stage(rc, "pruned", record="off", manifest=str(manifest_path), threshold_samples=False),
                      rerun_if_changed=True)
    _say(rc, f"[{next(step)}/{steps}] prune-in-run: {T} recorded epochs on the full set, prune, {E - T} more on "
             f"the kept set")
    pir = train(_stage(rc, "prune-in-run", prune=spec, record_epochs=T), rerun_if_changed=True)
    pir_store = open_store(out / "prune-in-run" / "trajectory")
    if not rc.baseline:
        shutil.copyfile(out / "prune-in-run" / "manifest.json", manifest_path)
        shutil.copyfile(out / "prune-in-run" / "manifest.npz", manifest_path.with_suffix(".npz"))
        store = pir_store
    controls = None
    if rc.controls:
        controls = _train_controls(rc, pir, load_store_manifest(out / "prune-in-run" / "manifest.json", pir_store),
                                   step, steps)
    text = write_report(rc, store, full, paper, pir, select_s, controls)
    return text + f"html report: {write_html_report(out)}\n"


CONTROLS = ("random-in-run", "full-same-cost")


def _train_controls(rc: RunConfig, pir: Trained, pir_manifest, step, steps: int) -> dict[str, Trained]:
    """The same-cost controls of prune-in-run (see :class:`RunConfig`).

    Random prune-in-run prunes at random, at the same epoch and with the same policy, as many
    observed samples as prune-in-run removed in all (pruned, outliers and mislabelled), and
    cleans nothing; so it keeps as many samples and costs the same.  The short full run trains
    every sample for ``round(cost / N)`` epochs, its own cosine schedule ending at its last.
    """
    T, m = rc.record_epochs, pir_manifest.data
    kept_observed = m["n_kept"] - len(m["unobserved"])
    ratio = (m["n_observed"] - kept_observed) / m["n_observed"]
    _say(rc, f"[{next(step)}/{steps}] control: random prune-in-run at epoch {T}, keeping {kept_observed} "
             f"observed samples like prune-in-run, no cleaning")
    at_random = dataclasses.replace(rc.spec, method="random", ratio=ratio, relabel=False, outliers=None)
    rand = train(_stage(rc, CONTROLS[0], prune=at_random, record_epochs=T, threshold_samples=False),
                 rerun_if_changed=True)
    n = pir.metrics[0]["samples_seen"]  # one epoch of the full data (padded as the sampler pads it)
    epochs = max(1, round(pir.cost / n))
    _say(rc, f"[{next(step)}/{steps}] control: the full data for {epochs} epochs ({epochs * n:,} sample-epochs; "
             f"prune-in-run: {pir.cost:,})")
    warmup = min(rc.base.optim.warmup_epochs, epochs - 1)
    short = train(_stage(rc, CONTROLS[1], epochs=epochs, warmup_epochs=warmup, record="off",
                         threshold_samples=False), rerun_if_changed=True)
    return {CONTROLS[0]: rand, CONTROLS[1]: short}


def write_report(rc: RunConfig, store, full: Trained | None, paper: Trained | None, pir: Trained,
                 select_s: float | None, controls: dict[str, Trained] | None = None) -> str:
    """``report.md``, ``report.json``, the score histogram and the accuracy curves of a pipeline."""
    from .report import markdown_table, plot_accuracy_curves, plot_score_histogram
    from .scoring import load_scores

    out, T, E = rc.out, rc.record_epochs, rc.base.epochs
    spec = rc.spec
    N = store.n_samples
    manifest_path = out / "manifest.json"
    manifest = load_store_manifest(manifest_path, store)
    m = manifest.data
    export_list(manifest, store.sample_ids, out / "kept.tsv")
    if rc.base.task == "reid":
        _export_reid_list(rc.base, manifest, out / "train_list.txt")
    full_cost = E * N
    rows, curves = [], {}
    if full is not None:
        rec_cost = sum(x["samples_seen"] for x in full.metrics[:T])
        rows.append({"run": "full data", "kept": N, "cost": full.cost, "rel": full.cost / full_cost,
                     "seconds": full.seconds, **_summary(full)})
        curves["full data"] = full.metrics
        rows.append({"run": f"paper protocol: record {T} + retrain {E} ({spec.describe()})",
                     "kept": len(manifest.kept), "cost": rec_cost + paper.cost,
                     "rel": (rec_cost + paper.cost) / full_cost,
                     "seconds": sum(x["seconds"] for x in full.metrics[:T]) + select_s + paper.seconds,
                     **_summary(paper)})
        curves["paper protocol (retrained)"] = paper.metrics
    pir_manifest = load_store_manifest(out / "prune-in-run" / "manifest.json", store)
    rows.append({"run": f"prune-in-run at epoch {T} ({spec.describe()})", "kept": len(pir_manifest.kept),
                 "cost": pir.cost, "rel": pir.cost / full_cost, "seconds": pir.seconds, **_summary(pir)})
    pir_row = rows[-1]
    curves["prune-in-run"] = pir.metrics
    control_rows = []
    if controls:
        rand, short = controls[CONTROLS[0]], controls[CONTROLS[1]]
        rand_kept = load_store_manifest(out / CONTROLS[0] / "manifest.json", store).kept
        control_rows = [
            {"run": f"control: random prune-in-run at epoch {T} (as many kept, no cleaning)", "kept": len(rand_kept),
             "cost": rand.cost, "rel": rand.cost / full_cost, "seconds": rand.seconds, **_summary(rand)},
            {"run": f"control: full data for {short.config.train.epochs} epochs (about the same cost)", "kept": N,
             "cost": short.cost, "rel": short.cost / full_cost, "seconds": short.seconds, **_summary(short)}]
        rows += control_rows
        curves["control: random prune-in-run"] = rand.metrics
        curves[f"control: full data, {short.config.train.epochs} epochs"] = short.metrics

    scores, _ = load_scores(store.run_dir / "scores.npz", n_samples=N)
    pruned_mask = np.zeros(N, bool)
    pruned_mask[m["pruned"]] = True
    outlier_mask = np.zeros(N, bool)
    outlier_mask[[o["index"] for o in m["removed_outliers"]]] = True
    hist = plot_score_histogram(scores[spec.method], pruned_mask, outlier_mask, out / f"{spec.method}_histogram.png",
                                name=spec.method, n_classes=store.n_classes)
    acc_png = plot_accuracy_curves(curves, out / "accuracy.png")
    metric = pir.metrics[-1]["metric_name"]
    cols = [("run", "way to the model"), ("kept", "train samples after pruning"), ("cost", "sample-epochs"),
            ("rel", "x one full training"), ("seconds", "wall s"), ("final", f"final {metric}"),
            ("best", f"best {metric}")]
    if rc.base.task == "reid":
        cols += [("mAP", "mAP"), ("rank1", "Rank-1"), ("rank5", "Rank-5"), ("rank10", "Rank-10"), ("mINP", "mINP")]
    given = ", ".join(f"{n}.{o}={v}" for n, opts in rc.params.items() for o, v in opts.items())
    lines = [f"# dprune run: {rc.base.data.dataset}, {rc.base.model.name}, {E} epochs, scores from the first {T}"
             + (f" (scoring: {given})" if given else ""), "",
             markdown_table(rows, cols), ""]
    headline = (f"- **prune-in-run costs {pir_row['rel']:.2f} of one full training** "
                f"({pir_row['cost']:,} of {full_cost:,} sample-epochs)")
    if full is not None:
        headline += (f", final {metric} {pir_row['final']:.4f} vs {rows[0]['final']:.4f} on the full data; the "
                     f"paper protocol costs {rows[1]['rel']:.2f} on its own (the recording is the baseline's first "
                     f"{T} epochs: {1 + paper.cost / full_cost:.2f} counting the baseline) and reaches "
                     f"{rows[1]['final']:.4f}")
    lines.append(headline + ".")
    if control_rows:
        d_rand = pir_row["final"] - control_rows[0]["final"]
        d_short = pir_row["final"] - control_rows[1]["final"]
        beats = d_rand > 0 and d_short > 0
        lines.append(f"- **against the same-cost controls**: prune-in-run {d_rand:+.4f} vs random prune-in-run, "
                     f"{d_short:+.4f} vs the full data trained {control_rows[1]['rel']:.2f} of a training. "
                     + ("It beats both here; one seed is not a test: a difference within the seed-to-seed spread "
                        "(see benchmarks/RESULTS.md) is not a result." if beats else
                        "**It does not beat both**: at this cost the pruning and cleaning did not pay here."))
    lines.append(f"- pruned {m['n_pruned']} of {m['n_observed']} observed samples by `{spec.method}` ({spec.policy} "
                 f"policy); removed {m['n_outliers']}; relabelled {len(m['relabelled'])}; kept {m['n_kept']}")
    lines.append("- sample-epochs = training samples processed by the optimiser; wall s = the epochs' time "
                 "(plus scoring and selection for the paper protocol; prune-in-run's includes its own)")
    noise_file = out / ("full" if full is not None else "prune-in-run") / "label_noise.npz"
    if noise_file.exists():
        z = read_npz(noise_file, "label noise file", {"flipped": ((N,), "b"), "clean_labels": ((N,), "i"),
                                                      "noisy_labels": ((N,), "i")})
        from .report.content import noise_recovery

        r = noise_recovery(m, z["flipped"], z["clean_labels"])
        lines.append(f"- injected label noise: {r['flipped']} wrong labels; acted on as mislabelled {r['acted']} "
                     f"(relabelled {r['relabelled']}, removed {r['removed_as_mislabelled']}), of which "
                     f"{r['true_positives']} were wrong (precision {r['precision']:.3f}, recall {r['recall']:.3f})"
                     + (f"; corrected labels right: {r['corrections_right']}/{r['relabelled']}" if r["relabelled"]
                        else ""))
    lines += ["", f"![{spec.method}]({hist.name})", f"![accuracy]({acc_png.name})", "",
              f"Files: manifest `{manifest_path}`, kept list `{out / 'kept.tsv'}`"
              + (f", training list in the dataset's format `{out / 'train_list.txt'}`" if rc.base.task == "reid" else "")
              + f", scores `{store.run_dir / 'scores.npz'}`."]
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "report.md", text)
    atomic_write_json(out / "report.json", {"rows": rows, "manifest": str(manifest_path), "record_epochs": T,
                                            "epochs": E, "full_training_sample_epochs": full_cost,
                                            "controls": [r["run"] for r in control_rows]})
    return text + f"\nreport: {out / 'report.md'}\nplots: {hist}, {acc_png}\nmanifest: {manifest_path}\n"


def _export_reid_list(cfg: TrainConfig, manifest, path: Path) -> None:
    """The kept training images as ``relpath pid`` lines with the dataset's own pids, so other
    ReID toolkits can train on the pruned, corrected set."""
    from .data.reid import ReIDRecord, build_reid_dataset, export_list as export_reid

    ds = build_reid_dataset(cfg.data.dataset, cfg.data.data_root)
    original_pid = {label: pid for pid, label in ds.pid_map.items()}
    records = [ReIDRecord(ds.train[i].relpath, original_pid[int(manifest.labels[i])], ds.train[i].camid)
               for i in manifest.kept.tolist()]
    export_reid(records, path)
