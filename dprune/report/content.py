"""What the visual report shows, as plain data: found from a run folder or a manifest, before any HTML.

:func:`collect` reads the manifest (validated against its store), the store's ``scores.npz``
and, when present, the run's ``report.json``, ``label_noise.npz`` and training configuration,
and returns a :class:`ReportContent`: galleries of sample indices with their captions, the
per-class counts, the correction quality against injected noise.  The pure functions below
it take arrays (``[N]`` per sample) and are what the tests check.

Galleries are sampled, the worst cases first: a person checks the doubtful ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_RELABELLED = 200
MAX_REMOVED = 120
MAX_CLASSES = 12
PER_CLASS = 5
MAX_CLASS_ROWS = 60


@dataclass
class Item:
    """One sample in a gallery: its index, a title (labels) and caption lines; ``tone`` good/bad frames it."""

    index: int
    title: str
    lines: list[str]
    tone: str = ""


@dataclass
class Gallery:
    key: str
    title: str
    note: str
    items: list[Item]
    total: int
    """Samples of this kind in the manifest; ``len(items)`` of them are shown."""


@dataclass
class ClassExtremes:
    name: str
    easiest_pruned: list[Item]
    hardest_kept: list[Item]


@dataclass
class ReportContent:
    title: str
    run_dir: Path
    """The manifest's folder, where ``report.html`` goes by default."""
    sources: list[tuple[str, str]]
    notes: list[str]
    summary: list[str]
    run_rows: list[dict]
    plots: list[Path]
    noise: dict | None
    galleries: list[Gallery]
    extremes: list[ClassExtremes]
    extremes_note: str
    class_rows: list[dict]
    class_note: str
    below_k: list[dict] | None
    sample_ids: list[str]
    images: object | None = None
    """A :class:`dprune.report.images.ImageSource`, or None (the notes say why)."""


# ------------------------------------------------------------------------- pure rules
def epochs_agreeing(logits_ENC: np.ndarray, counts_EN: np.ndarray, label_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: in how many observed epochs the logits' argmax is ``label``, and how many epochs observed it.

    ``logits_ENC`` [E, n, C] and ``counts_EN`` [E, n] of the samples shown; ``label_N`` [n].
    An epoch with non-finite logits agrees with nothing.
    """
    logits_ENC = np.asarray(logits_ENC, np.float32)
    observed_EN = np.asarray(counts_EN) > 0
    finite_EN = np.isfinite(logits_ENC).all(-1)
    agree_EN = (logits_ENC.argmax(-1) == np.asarray(label_N)[None, :]) & observed_EN & finite_EN
    return agree_EN.sum(0), observed_EN.sum(0)


def noise_recovery(m: dict, flipped_N: np.ndarray, clean_N: np.ndarray) -> dict:
    """How the manifest's mislabel decisions match injected noise (known flips).

    Acted on as mislabelled: relabelled samples and samples removed for a ``mislabelled`` reason.
    Precision: the share of those whose label was flipped; recall: the share of flips acted on;
    corrections right: relabelled samples whose new label is the clean one.
    """
    N = len(flipped_N)
    flipped_N = np.asarray(flipped_N, bool)
    idx = np.asarray([int(i) for i in m["relabelled"]], np.int64)
    new = np.asarray(list(m["relabelled"].values()), np.int64)
    removed = np.asarray([o["index"] for o in m["removed_outliers"] if o["reason"].startswith("mislabelled")],
                         np.int64)
    acted = np.zeros(N, bool)
    acted[idx] = True
    acted[removed] = True
    tp = int((acted & flipped_N).sum())
    return {"flipped": int(flipped_N.sum()), "acted": int(acted.sum()), "relabelled": len(idx),
            "removed_as_mislabelled": len(removed), "true_positives": tp,
            "precision": tp / acted.sum() if acted.any() else float("nan"),
            "recall": tp / flipped_N.sum() if flipped_N.any() else float("nan"),
            "corrections_right": int((new == np.asarray(clean_N)[idx]).sum())}


def easiest_and_hardest(score_N: np.ndarray, labels_N: np.ndarray, pruned_N: np.ndarray, kept_N: np.ndarray,
                        c: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Class ``c``'s ``k`` pruned samples of lowest score (easiest first) and ``k`` kept samples of highest
    score (hardest first); samples without a finite score are left out."""
    ok = (np.asarray(labels_N) == c) & np.isfinite(score_N)
    pruned = np.flatnonzero(ok & pruned_N)
    kept = np.flatnonzero(ok & kept_N)
    return (pruned[np.argsort(score_N[pruned], kind="stable")[:k]],
            kept[np.argsort(-score_N[kept], kind="stable")[:k]])


def class_counts(labels_final_N: np.ndarray, given_N: np.ndarray, kept_N: np.ndarray, pruned_N: np.ndarray,
                 removed_N: np.ndarray, relabelled_N: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Per class [C], by the final labels: samples, kept, pruned, removed, relabelled into and out of it."""
    def count(mask, labels=labels_final_N):
        return np.bincount(labels[mask], minlength=n_classes)[:n_classes]

    everything = np.ones(len(labels_final_N), bool)
    return {"samples": count(everything), "kept": count(kept_N), "pruned": count(pruned_N),
            "removed": count(removed_N), "relabelled_in": count(relabelled_N),
            "relabelled_out": count(relabelled_N, given_N)}


def identities_below(kept_C: np.ndarray, before_C: np.ndarray, K: int) -> np.ndarray:
    """Identities with at least ``K`` images before selection and fewer than ``K`` kept (P x K sampling
    then repeats their images to fill a group)."""
    return np.flatnonzero((np.asarray(before_C) >= K) & (np.asarray(kept_C) < K))


def split_reason(reason: str) -> tuple[str, str]:
    """A manifest's removal reason as (what, detail): ``"flat soft label"``, ``"(among ...): margin = 0.03"``."""
    cuts = [k for k in (reason.find(" ("), reason.find(": ")) if k > 0]
    if not cuts:
        return reason, ""
    return reason[:min(cuts)], reason[min(cuts):].strip(" :")


# ------------------------------------------------------------------------- reading a run
def _fmt_p(x) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.2f}"


def locate(path) -> tuple[Path, Path]:
    """``(manifest.json, store folder)`` for a ``dprune run`` / ``dprune train`` folder or a manifest file."""
    path = Path(path)
    manifest = path / "manifest.json" if path.is_dir() else path
    if not manifest.is_file():
        raise ValueError(f"{path} holds no manifest.json: give a dprune run or dprune train --prune-at folder, or "
                         f"a manifest written by dprune prune")
    from ..fileio import read_json

    m = read_json(manifest, "manifest")
    source = m.get("source_run") if isinstance(m, dict) else None
    if not isinstance(source, str):
        raise ValueError(f"{manifest} is not a dprune manifest (no source_run)")
    store_dir = Path(source)
    if not store_dir.is_dir():
        raise ValueError(f"{manifest}: its trajectory store {store_dir} does not exist (moved or deleted)")
    return manifest, store_dir


def collect(path) -> ReportContent:
    """Everything the report shows for a run folder or manifest ``path`` (see the module docstring)."""
    from ..fileio import read_json
    from ..manifest import load_manifest
    from ..scoring import SCORES_FILE, load_scores
    from ..store import open_store
    from ..threshold import data_labels
    from .images import open_images, training_config

    manifest_path, store_dir = locate(path)
    run_dir = manifest_path.parent
    store = open_store(store_dir, "r")
    given_N, C, fp = data_labels(store)
    man = load_manifest(manifest_path, fingerprint=fp, labels_N=given_N)
    m, N = man.data, store.n_samples
    notes: list[str] = []

    scores_path = store_dir / SCORES_FILE
    scores: dict[str, np.ndarray] = {}
    if scores_path.is_file():
        scores, smeta = load_scores(scores_path, n_samples=N)
        if smeta["made_from"] != m["made_from"]:
            notes.append(f"{scores_path} was made from {smeta['made_from'].get('epochs')} epochs of generation "
                         f"{str(smeta['made_from'].get('generation'))[:12]}, the manifest from "
                         f"{m['made_from'].get('epochs')} of {str(m['made_from'].get('generation'))[:12]}: "
                         f"confidences shown are the scores file's")
    else:
        notes.append(f"no {scores_path}: no confidences or scores to show")

    cfg, cfg_source = training_config(run_dir, store_dir)
    images, why = open_images(cfg, cfg_source, store.sample_ids)
    if images is None:
        notes.insert(0, f"No thumbnails: {why}. Samples are shown by their ids.")
    task = (cfg or {}).get("task", "classification")
    class_names = images.class_names if images is not None and images.class_names else None

    def name(c: int) -> str:
        return class_names[c] if class_names and 0 <= c < len(class_names) else str(c)

    r = _Run(store, m, given_N, man.labels, _mask(N, man.kept), _mask(N, m["pruned"]),
             _mask(N, [o["index"] for o in m["removed_outliers"]]),
             np.asarray([int(i) for i in m["relabelled"]], np.int64), scores, name)
    noise_file = store_dir.parent / "label_noise.npz"
    noise = None
    if noise_file.is_file():
        with np.load(noise_file) as z:
            flipped_N, clean_N = z["flipped"].astype(bool), z["clean_labels"].astype(np.int64)
        if flipped_N.shape != (N,) or clean_N.shape != (N,):
            notes.append(f"{noise_file} does not have one entry per sample ({flipped_N.shape}); ignored")
        else:
            r.flipped_N, r.clean_N = flipped_N, clean_N
            noise = noise_recovery(m, flipped_N, clean_N)

    counts = class_counts(r.final_N, given_N, r.kept_N, r.pruned_N, r.removed_N, _mask(N, r.rel_idx), C)
    galleries = [_relabelled(r), _removed(r)]
    method = m.get("scorer")
    extremes, extremes_note = _extremes(r, method, counts["pruned"])
    class_rows, class_note, below_k = _per_class(r, counts, task, cfg)

    report_json = run_dir / "report.json"
    run_rows = list(read_json(report_json, "run report").get("rows", [])) if report_json.is_file() else []
    summary, plots = _report_md(run_dir / "report.md")
    sources = [("manifest", str(manifest_path)), ("trajectory store", f"{store_dir} ({store.KIND})"),
               ("scores", str(scores_path) if scores else "none"),
               ("images", images.description if images is not None else "none"),
               ("training configuration", cfg_source if cfg is not None else "none")]
    if noise is not None:
        sources.append(("injected label noise", str(noise_file)))
    what = f"{cfg.get('dataset')}, {cfg.get('model')}" if cfg else f"{N} samples x {C} classes"
    title = (f"dprune report: {what} — kept {m['n_kept']} of {N}, pruned {m['n_pruned']} by {method}, "
             f"removed {m['n_outliers']}, relabelled {len(r.rel_idx)}")
    return ReportContent(title, run_dir, sources, notes, summary, run_rows, plots, noise, galleries, extremes, extremes_note,
                         class_rows, class_note, below_k, list(store.sample_ids), images)


@dataclass
class _Run:
    """What every section of the page is computed from: the manifest's decisions as arrays [N], the scores."""

    store: object
    m: dict
    given_N: np.ndarray
    final_N: np.ndarray
    kept_N: np.ndarray
    pruned_N: np.ndarray
    removed_N: np.ndarray
    rel_idx: np.ndarray
    scores: dict
    name: object
    """Class index -> the name shown (class name, ReID identity, or the index)."""
    flipped_N: np.ndarray | None = None
    clean_N: np.ndarray | None = None

    def get(self, key: str) -> np.ndarray:
        """A score or flag as float64 [N]; NaN when the scores file lacks it."""
        N = len(self.given_N)
        return np.asarray(self.scores[key], np.float64) if key in self.scores else np.full(N, np.nan)

    def sample(self, i: int) -> str:
        return f"#{i} {self.store.sample_ids[i]}"


def _mask(N: int, indices) -> np.ndarray:
    out = np.zeros(N, bool)
    out[np.asarray(indices, np.int64)] = True
    return out


def _relabelled(r: _Run) -> Gallery:
    """The relabelled samples, least confident corrections first."""
    p_label, p_max, p_avg_label = r.get("p_label"), r.get("p_max"), r.get("p_avg_label")
    soft_argmax = np.asarray(r.scores.get("soft_argmax", np.full(len(r.given_N), -1)), np.int64)
    T = int(r.m["made_from"]["epochs"])
    # Whether the confident detector read p-bar (its p at the label is then a line of its own);
    # scores made before the parameter existed read p-bar.
    detector = ((r.m.get("scores") or {}).get("params") or {}).get("confident", {})
    read_mean = detector.get("probs", "mean_softmax") == "mean_softmax"
    order = np.lexsort((r.rel_idx, np.nan_to_num(p_max[r.rel_idx], nan=-1.0)))
    shown = r.rel_idx[order][:MAX_RELABELLED]
    full = r.store.KIND == "full"
    if full and len(shown):
        views = r.store.epoch_views(range(min(T, r.store.epochs_completed)))
        C = r.store.n_classes
        agree, observed = epochs_agreeing(np.stack([z[shown] for z, _ in views]) if views else np.zeros((0, len(shown), C)),
                                          np.stack([c[shown] for _, c in views]) if views else np.zeros((0, len(shown))),
                                          r.final_N[shown])
    items = []
    for j, i in enumerate(shown.tolist()):
        g, n = int(r.given_N[i]), int(r.final_N[i])
        p_new = p_max[i] if soft_argmax[i] == n else np.nan
        lines = [f"p({r.name(g)}) {_fmt_p(p_label[i])} · p({r.name(n)}) {_fmt_p(p_new)}"]
        if read_mean and np.isfinite(p_avg_label[i]):
            lines.append(f"mean p({r.name(g)}) {_fmt_p(p_avg_label[i])}")
        if full:
            lines.append(f"{int(agree[j])}/{int(observed[j])} epochs say {r.name(n)}")
        tone = ""
        if r.clean_N is not None:
            tone = "good" if r.clean_N[i] == n else "bad"
            lines.append("right: the injected flip undone" if tone == "good"
                         else f"true label {r.name(int(r.clean_N[i]))}")
        lines.append(r.sample(i))
        items.append(Item(i, f"{r.name(g)} → {r.name(n)}", lines, tone))
    note = ("given label → new label; the soft label's probability of each (scores of the first "
            f"{T} epoch{'s' if T != 1 else ''}), and how many recorded epochs' argmax agree with the new label"
            + ("" if full else " (a full store is needed for the per-epoch count)")
            + "; least confident first"
            + ("; green: the new label is the clean one, red: it is not" if r.clean_N is not None else ""))
    return Gallery("relabelled", f"Relabelled samples ({len(r.rel_idx)})", note, items, len(r.rel_idx))


def _removed(r: _Run) -> Gallery:
    """The removed samples with their reasons, and those with non-finite logits (pruned first); flattest first."""
    reasons = {int(o["index"]): str(o["reason"]) for o in r.m["removed_outliers"]}
    for i in r.m.get("nonfinite_pruned", []):
        reasons.setdefault(int(i), "non-finite (NaN/Inf) logits: pruned first")
    idx = np.asarray(sorted(reasons), np.int64)
    order = np.lexsort((idx, np.nan_to_num(r.get("margin")[idx], nan=-1.0)))
    items = []
    for i in idx[order][:MAX_REMOVED].tolist():
        lines = [part for part in split_reason(reasons[i]) if part]
        if r.flipped_N is not None and r.flipped_N[i]:
            lines.append(f"its label was wrong (true {r.name(int(r.clean_N[i]))})")
        lines.append(r.sample(i))
        items.append(Item(i, f"label {r.name(int(r.given_N[i]))}", lines))
    return Gallery("removed", f"Removed samples ({len(idx)})",
                   "removed as mislabelled or as outliers, with the reason for each (and samples with non-finite logits, "
                   "pruned first); flattest soft labels first", items, len(idx))


def _extremes(r: _Run, method: str, pruned_C: np.ndarray) -> tuple[list[ClassExtremes], str]:
    """Per class, the easiest pruned and hardest kept samples by the manifest's scorer."""
    if method not in r.scores:
        return [], f"the scores file holds no {method!r} score: no ranking to show"
    score_N = r.get(method)
    C = len(pruned_C)
    classes, note = np.arange(C), ""
    if C > MAX_CLASSES:
        classes = np.argsort(-pruned_C, kind="stable")[:MAX_CLASSES]
        note = f"the {MAX_CLASSES} of {C} classes that lost most samples to pruning; "
    out = []
    for c in classes.tolist():
        sides = easiest_and_hardest(score_N, r.final_N, r.pruned_N, r.kept_N, c, PER_CLASS)
        out.append(ClassExtremes(r.name(c), *[[Item(i, f"{method} {score_N[i]:.4g}", [r.sample(i)])
                                               for i in side.tolist()] for side in sides]))
    note += (f"left: the pruned samples of lowest {method} score (the easiest, pruned first); right: the kept "
             f"samples of highest score (the hardest); classes by their final labels")
    return out, note


def _per_class(r: _Run, counts: dict, task: str, cfg: dict | None) -> tuple[list[dict], str, list[dict] | None]:
    """Rows of kept / pruned counts per class (ReID: per identity, lowest kept fraction first), and for ReID
    the identities that fell below K images."""
    C = len(counts["samples"])
    unit = "identity" if task == "reid" else "class"
    frac = np.where(counts["samples"] > 0, counts["kept"] / np.maximum(counts["samples"], 1), np.nan)
    worst_first = task == "reid" or C > MAX_CLASS_ROWS
    order = np.argsort(np.nan_to_num(frac, nan=2.0), kind="stable") if worst_first else np.arange(C)
    rows = [{unit: r.name(c), "samples": int(counts["samples"][c]), "kept": int(counts["kept"][c]),
             "pruned": int(counts["pruned"][c]), "removed": int(counts["removed"][c]),
             "relabelled into": int(counts["relabelled_in"][c]), "relabelled out": int(counts["relabelled_out"][c]),
             "kept fraction": float(frac[c])} for c in order[:MAX_CLASS_ROWS].tolist()]
    note = (f"by final label; {'lowest kept fraction first; ' if worst_first else ''}"
            f"{min(C, MAX_CLASS_ROWS)} of {C} {'identities' if task == 'reid' else 'classes'} shown")
    below_k = None
    if task == "reid":
        K = int((cfg or {}).get("pk_k", 4))
        before = np.bincount(r.given_N, minlength=C)[:C]
        below_k = [{"identity": r.name(c), "images before": int(before[c]), "kept": int(counts["kept"][c]), "K": K}
                   for c in identities_below(counts["kept"], before, K).tolist()]
    return rows, note, below_k


def _report_md(path: Path) -> tuple[list[str], list[Path]]:
    """The bullet lines and the plots (``![..](file.png)``) of a ``dprune run`` report.md."""
    import re

    if not path.is_file():
        return [], []
    text = path.read_text(encoding="utf-8")
    bullets = [line[2:] for line in text.splitlines() if line.startswith("- ")]
    plots = [path.parent / p for p in re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", text)]
    return bullets, [p for p in plots if p.is_file()]
