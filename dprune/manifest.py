"""The pruning manifest: what to train on and with which labels; written atomically, read strictly.

``manifest.json`` is the source of truth: the source run's identity (fingerprint,
generation, epochs scored), the scores' parameters, the selection, and the decisions
(``kept``, ``pruned``, ``relabelled`` {index: label}, ``removed_outliers`` with a reason each,
``unobserved``, ``unscored``).  ``manifest.npz`` beside it holds the same as arrays (with the
final labels) for numpy users; the JSON records the npz's SHA-256.

Writing: the JSON first, then the npz, each atomically; a kill between the two leaves a
complete new JSON (training only reads the JSON and the dataset's own labels) and an npz the
JSON does not vouch for, which a reader of the npz is told to regenerate.

Reading (:func:`load_manifest`) validates everything before anything uses it: types, index
ranges, uniqueness, that kept and removed are disjoint, that relabelled samples are kept,
labels in [0, C), a non-empty kept set, and the dataset's fingerprint.
"""
from __future__ import annotations

import hashlib
import io
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fileio import atomic_write_json, atomic_write_with, read_json, read_npz
from .labels import MAX_CLASSES
from .select import Selection

MANIFEST_FORMAT = 2
KIND = "dprune-manifest"

MAX_SAMPLES = 1 << 40
"""Largest N a manifest may claim: beyond any dataset, and small enough that every index is an int64."""


def manifest_dict(sel: Selection, *, source_run: str, made_from: dict, n_classes: int, scores_meta: dict | None,
                  fingerprint: dict | None = None) -> dict:
    N = len(sel.labels_final)
    n_pruned = len(sel.pruned)
    return {
        "format_version": MANIFEST_FORMAT,
        "kind": KIND,
        "source_run": source_run,
        "fingerprint": fingerprint or made_from["fingerprint"],
        "made_from": made_from,
        "n_samples": N,
        "n_classes": int(n_classes),
        "scorer": sel.params["method"],
        "scores": None if scores_meta is None else {k: scores_meta.get(k) for k in ("methods", "params", "clipped")},
        "selection": sel.params,
        "policy": sel.params["policy"],
        "ratio_requested": sel.params["ratio"],
        "n_observed": sel.n_observed,
        "n_pruned": n_pruned,
        "ratio_achieved": n_pruned / sel.n_observed if sel.n_observed else 0.0,
        "n_outliers": len(sel.outlier_index),
        "n_kept": len(sel.kept),
        "n_removed_total": n_pruned + len(sel.outlier_index),
        # What a total budget's ratio counts: pruned and removed (ratio_achieved counts the pruned).
        "ratio_removed": (n_pruned + len(sel.outlier_index)) / sel.n_observed if sel.n_observed else 0.0,
        "kept": sel.kept.tolist(),
        "pruned": sel.pruned.tolist(),
        "relabelled": {str(int(i)): int(c) for i, c in zip(sel.relabel_index, sel.relabel_label)},
        "removed_outliers": [{"index": int(i), "reason": r} for i, r in zip(sel.outlier_index, sel.outlier_reason)],
        "unobserved": sel.unobserved.tolist(),
        "unscored": sel.unscored.tolist(),
        "nonfinite_pruned": sel.nonfinite_pruned.tolist(),
        "emptied_classes": sel.emptied_classes,
        "threshold_samples": sel.threshold_index.tolist(),
        "threshold_samples_note": ("trained in a fake class to set the AUM threshold, so not judged by "
                                   "this manifest: kept, with their dataset labels") if len(sel.threshold_index) else "",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": shlex.join(sys.argv),
    }


def write_manifest(path, sel: Selection, *, source_run: str, made_from: dict, n_classes: int,
                   fingerprint: dict | None = None, scores_meta: dict | None = None, extra: dict | None = None) -> dict:
    """Write ``manifest.json`` and ``manifest.npz`` beside it (see the module docstring); return the JSON.

    ``made_from`` is the source store's identity (:meth:`dprune.store.RunDirStore.identity`),
    ``fingerprint`` the dataset's (default the store's, ``made_from["fingerprint"]``), ``n_classes``
    its class count; ``scores_meta`` the ``__meta__`` of the scores used; ``extra`` adds entries to the JSON.
    """
    path = Path(path)
    npz_path = path.with_suffix(".npz")
    m = manifest_dict(sel, source_run=source_run, made_from=made_from, n_classes=n_classes, scores_meta=scores_meta,
                      fingerprint=fingerprint)
    m.update(extra or {})
    buf = io.BytesIO()
    np.savez(buf, kept=sel.kept, pruned=sel.pruned, relabel_index=sel.relabel_index, relabel_label=sel.relabel_label,
             outlier_index=sel.outlier_index, unobserved=sel.unobserved, unscored=sel.unscored, labels=sel.labels_final)
    data = buf.getvalue()
    m["npz"] = npz_path.name
    m["npz_sha256"] = hashlib.sha256(data).hexdigest()
    atomic_write_json(path, m)
    atomic_write_with(npz_path, lambda f: f.write(data))
    return m


@dataclass
class Manifest:
    """A loaded, validated manifest: what to train on and with which labels."""

    data: dict
    kept: np.ndarray
    labels: np.ndarray  # [N] final labels (given labels with relabellings applied)

    @property
    def fingerprint(self) -> dict:
        return self.data["fingerprint"]

    @property
    def digest(self) -> str:
        """SHA-256 of the decisions (what is trained on, with which labels): the manifest's identity."""
        return decisions_digest(self.data)


def decisions_digest(m: dict) -> str:
    core = {k: m[k] for k in ("fingerprint", "kept", "relabelled")}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()


def manifest_digest(path) -> str | None:
    """The digest of the decisions in a manifest file (see :attr:`Manifest.digest`), None if unreadable."""
    try:
        m = read_json(Path(path), "manifest")
        return decisions_digest(m)
    except (ValueError, KeyError, TypeError):
        return None


def _index_list(m: dict, key: str, N: int, path: Path) -> np.ndarray:
    v = m.get(key)
    if not isinstance(v, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise ValueError(f"{path}: {key!r} must be a list of integer sample indices")
    bad = next((i for i in v if not 0 <= i < N), None)  # checked before numpy: 10**30 overflows int64
    if bad is not None:
        raise ValueError(f"{path}: {key!r} holds indices outside [0, {N}), e.g. {bad}")
    arr = np.asarray(v, dtype=np.int64)
    if len(np.unique(arr)) != len(arr):
        raise ValueError(f"{path}: {key!r} lists a sample more than once")
    return arr


def load_manifest(path, *, fingerprint: dict | None = None, labels_N: np.ndarray | None = None) -> Manifest:
    """Read and validate a manifest (see the module docstring); refuse one made for another dataset.

    ``labels_N`` (the dataset's given labels) builds the final labels from ``relabelled``;
    without it they are read from the npz, which must match the JSON's checksum.
    """
    path = Path(path)
    m = read_json(path, "manifest")
    if not isinstance(m, dict) or m.get("kind") != KIND:
        raise ValueError(f"{path} is not a dprune manifest")
    if m.get("format_version") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: manifest format {m.get('format_version')!r} is not supported "
                         f"(expected {MANIFEST_FORMAT}; rerun dprune prune)")
    for k in ("fingerprint", "n_samples", "n_classes", "kept", "pruned", "relabelled", "removed_outliers"):
        if k not in m:
            raise ValueError(f"{path} is incomplete: missing {k!r}")
    N, C = m["n_samples"], m["n_classes"]
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (N, C)) or not 1 <= N <= MAX_SAMPLES \
            or not 2 <= C <= MAX_CLASSES:
        raise ValueError(f"{path}: n_samples must be an integer in [1, {MAX_SAMPLES:,}] and n_classes in "
                         f"[2, {MAX_CLASSES:,}], got {N!r}, {C!r}")
    fp = m["fingerprint"]
    if not isinstance(fp, dict) or fp.get("n_samples") != N or not isinstance(fp.get("sha256"), str):
        raise ValueError(f"{path}: bad fingerprint {fp!r}")
    if fingerprint is not None and fp != fingerprint:
        raise ValueError(
            f"{path} was made for a different dataset (fingerprint {fp['sha256'][:12]}, N={fp['n_samples']}; "
            f"this dataset: {fingerprint['sha256'][:12]}, N={fingerprint['n_samples']})"
        )
    kept = _index_list(m, "kept", N, path)
    if not kept.size:
        raise ValueError(f"{path}: the kept set is empty; there is nothing to train on")
    pruned = _index_list(m, "pruned", N, path)
    outliers = m["removed_outliers"]
    if not isinstance(outliers, list) or not all(isinstance(o, dict) and "index" in o for o in outliers):
        raise ValueError(f"{path}: 'removed_outliers' must be a list of {{'index': i, 'reason': ...}}")
    removed = np.r_[pruned, _index_list({"removed_outliers": [o["index"] for o in outliers]}, "removed_outliers",
                                        N, path)]
    if np.intersect1d(kept, removed).size:
        raise ValueError(f"{path}: some samples are both kept and removed (e.g. {np.intersect1d(kept, removed)[0]})")
    rel = m["relabelled"]
    if not isinstance(rel, dict):
        raise ValueError(f"{path}: 'relabelled' must be an object {{index: label}}")
    rel_idx, rel_lab = [], []
    for k, c in rel.items():
        if not (isinstance(k, str) and k.isascii() and k.isdigit() and len(k) <= 19 and str(int(k)) == k) \
                or not 0 <= int(k) < N:
            raise ValueError(f"{path}: relabelled key {k!r} is not a sample index in [0, {N})")
        if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < C:
            raise ValueError(f"{path}: relabelled sample {k} has label {c!r}, not an integer in [0, {C})")
        rel_idx.append(int(k))
        rel_lab.append(c)
    rel_idx = np.asarray(rel_idx, np.int64)
    if rel_idx.size and not np.isin(rel_idx, kept).all():
        raise ValueError(f"{path}: relabelled sample {rel_idx[~np.isin(rel_idx, kept)][0]} is not kept")
    if labels_N is not None:
        labels = np.asarray(labels_N, np.int64).copy()
        if labels.shape != (N,):
            raise ValueError(f"labels have shape {labels.shape}, manifest has N = {N}")
    else:
        npz_path = path.with_name(m.get("npz", path.with_suffix(".npz").name))
        if not isinstance(m.get("npz"), str) or Path(m["npz"]).name != m["npz"]:
            raise ValueError(f"{path}: bad 'npz' entry {m.get('npz')!r}")
        digest = hashlib.sha256(npz_path.read_bytes()).hexdigest() if npz_path.exists() else None
        if digest != m.get("npz_sha256"):
            raise ValueError(f"{path}: {npz_path.name} does not belong to this manifest (checksum mismatch); "
                             f"rerun dprune prune, or load with the dataset's labels")
        labels = read_npz(npz_path, "manifest arrays", {"labels": ((N,), "i")}, None)["labels"].astype(np.int64)
    labels[rel_idx] = np.asarray(rel_lab, np.int64)
    return Manifest(data=m, kept=kept, labels=labels)


def npz_is_current(path) -> bool:
    """True when the ``.npz`` beside a manifest is the one its JSON vouches for."""
    path = Path(path)
    try:
        m = read_json(path, "manifest")
        npz = path.with_name(m["npz"])
        return npz.exists() and hashlib.sha256(npz.read_bytes()).hexdigest() == m.get("npz_sha256")
    except (ValueError, KeyError, TypeError, OSError):
        return False


def rewrite_npz(manifest: Manifest, path) -> None:
    """Rebuild the ``.npz`` of a loaded manifest from its JSON (after a kill between the two writes)."""
    path = Path(path)
    m = dict(manifest.data)
    rel = np.asarray(sorted(int(i) for i in m["relabelled"]), np.int64)
    arrays = {"kept": manifest.kept, "pruned": np.asarray(m["pruned"], np.int64), "relabel_index": rel,
              "relabel_label": manifest.labels[rel],
              "outlier_index": np.asarray([o["index"] for o in m["removed_outliers"]], np.int64),
              "unobserved": np.asarray(m.get("unobserved", []), np.int64),
              "unscored": np.asarray(m.get("unscored", []), np.int64), "labels": manifest.labels}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    m["npz"] = path.with_suffix(".npz").name
    m["npz_sha256"] = hashlib.sha256(data).hexdigest()
    atomic_write_json(path, m)
    atomic_write_with(path.with_suffix(".npz"), lambda f: f.write(data))


def export_list(manifest: Manifest, sample_ids: list[str], path) -> int:
    """Write the kept samples as ``index<TAB>sample_id<TAB>label`` lines; return the count."""
    from .fileio import atomic_write_text

    if len(sample_ids) != manifest.data["n_samples"]:
        raise ValueError(f"{len(sample_ids)} sample ids for a manifest of N = {manifest.data['n_samples']}")
    lines = [f"{i}\t{sample_ids[i]}\t{manifest.labels[i]}\n" for i in manifest.kept.tolist()]
    atomic_write_text(Path(path), "".join(lines))
    return len(lines)
