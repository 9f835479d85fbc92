"""Why the default detector trails cleanlab on some noise: its ranking or its count?

A detector's F1 rests on two things: how it ranks the samples (which are most likely
mislabelled) and how many it flags.  This script separates them on the recorded noisy runs of
``noisy_method.py`` (a work folder holding ``<setting>/seed<s>/noisy`` with its trajectory and
``label_noise.npz``, and cleanlab's cached 5-fold probabilities ``cleanlab-5x<e>/probs.npz``):

- ranking: AUROC of dprune's label margin (the default detector's, on the first T epochs) and of
  cleanlab's normalized margin on its out-of-sample probabilities, against the injected flips;
  and each one's F1 when it flags exactly as many samples as there are flips (the count given);
- count: how many each flags, dprune's default against cleanlab's default rule
  (``prune_by_noise_rate``) and its ``predicted_neq_given``, beside the true number of flips.

Nothing is trained: it reads what the sweep left.  The report goes to ``--out``.

    OMP_NUM_THREADS=1 python benchmarks/detector_count.py --work runs/bench/noisy \\
        --settings symmetric0.4 class0.2 class0.4 instance0.2 instance0.4 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, auc, machine, prf, store_and_truth  # noqa: E402

from dprune.scoring import score_store  # noqa: E402

CLEANLAB_RULES = ("prune_by_noise_rate", "predicted_neq_given")


def top_n(score_N: np.ndarray, n: int) -> np.ndarray:
    """Flags on the ``n`` highest scores (ties broken by index)."""
    flags = np.zeros(len(score_N), bool)
    flags[np.argsort(-score_N, kind="stable")[:n]] = True
    return flags


def measure(run_dir: Path, T_list, cv_list, folds: int = 5) -> dict:
    """dprune's detector at each T and cleanlab at each fold budget, on one recorded noisy run."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    store, truth = store_and_truth(run_dir / "noisy")
    flipped = truth["flipped"]
    n_flips = int(flipped.sum())
    out = {"n_flipped": n_flips, "dprune": {}, "cleanlab": {}}
    for T in T_list:
        scores, _ = score_store(store, methods=["confident"], first_epochs=T)
        badness = -scores["label_margin"]
        out["dprune"][f"T{T}"] = {"auroc": auc(badness, flipped)["auroc"], "flags": prf(scores["confident"], flipped),
                                  "f1_at_true_count": prf(top_n(badness, n_flips), flipped)["f1"]}
    for cv in cv_list:
        path = run_dir / f"cleanlab-{folds}x{cv}" / "probs.npz"
        if not path.exists():
            continue
        with np.load(path) as z:
            probs = z["probs"]
        badness = -get_label_quality_scores(store.labels, probs, method="normalized_margin")
        out["cleanlab"][f"{folds}x{cv}"] = {
            "auroc": auc(badness, flipped)["auroc"], "f1_at_true_count": prf(top_n(badness, n_flips), flipped)["f1"],
            "rules": {r: prf(find_label_issues(store.labels, probs, filter_by=r, n_jobs=1), flipped)
                      for r in CLEANLAB_RULES}}
    return out


def report(results: dict, T_list, cv_list, folds: int = 5) -> str:
    """Means over the seeds of each setting."""
    def mean(rows, get):
        return np.mean([get(r) for r in rows])

    lines = ["# The default detector against cleanlab: ranking and count", "",
             "Per setting, the mean over the seeds. AUROC of the ranking (dprune: the default detector's "
             "label margin on the soft label of the first T epochs; cleanlab: its normalized margin on "
             "5-fold out-of-sample probabilities); F1 when the count is given (as many flagged as there "
             "are flips); then the count each rule flags and its F1. Percent. dprune's default rule is the "
             "`confident` detector's; cleanlab's is `find_label_issues`' default, `prune_by_noise_rate`.", "",
             "| setting | flips | way | AUROC | F1, count given | flagged (default rule) | F1 | "
             "flagged (`predicted_neq_given`) | F1 |", "|---|---|---|---|---|---|---|---|---|"]
    for setting, by_seed in results.items():
        rows = list(by_seed.values())
        flips = mean(rows, lambda r: r["n_flipped"])
        for T in T_list:
            d = lambda r, T=T: r["dprune"][f"T{T}"]  # noqa: E731
            lines.append(f"| {setting} | {flips:,.0f} | dprune, T = {T} | {mean(rows, lambda r: d(r)['auroc']) * 100:.1f} | "
                         f"{mean(rows, lambda r: d(r)['f1_at_true_count']) * 100:.1f} | "
                         f"{mean(rows, lambda r: d(r)['flags']['flagged']):,.0f} | "
                         f"{mean(rows, lambda r: d(r)['flags']['f1']) * 100:.1f} | | |")
        for cv in cv_list:
            have = [r for r in rows if f"{folds}x{cv}" in r["cleanlab"]]
            if not have:
                continue
            c = lambda r, cv=cv: r["cleanlab"][f"{folds}x{cv}"]  # noqa: E731
            rule = lambda r, q, k, c=c: c(r)["rules"][q][k]  # noqa: E731
            lines.append(f"| {setting} | {flips:,.0f} | cleanlab {folds} × {cv} ({len(have)} of {len(rows)} seeds) | "
                         f"{mean(have, lambda r: c(r)['auroc']) * 100:.1f} | "
                         f"{mean(have, lambda r: c(r)['f1_at_true_count']) * 100:.1f} | "
                         f"{mean(have, lambda r: rule(r, CLEANLAB_RULES[0], 'flagged')):,.0f} | "
                         f"{mean(have, lambda r: rule(r, CLEANLAB_RULES[0], 'f1')) * 100:.1f} | "
                         f"{mean(have, lambda r: rule(r, CLEANLAB_RULES[1], 'flagged')):,.0f} | "
                         f"{mean(have, lambda r: rule(r, CLEANLAB_RULES[1], 'f1')) * 100:.1f} |")
    return "\n".join(lines) + "\n"


def over_runs(work: Path, settings, seeds, measure_one) -> dict:
    """``{setting: {seed: measure_one(run_dir, seed)}}`` over the recorded noisy runs of a work folder."""
    results = {}
    for setting in settings:
        for seed in seeds:
            run_dir = work / setting / f"seed{seed}"
            if not (run_dir / "noisy" / "trajectory").exists():
                raise SystemExit(f"error: no recorded noisy run under {run_dir}")
            results.setdefault(setting, {})[seed] = measure_one(run_dir, seed)
    return results


def footer(script: str, argv) -> str:
    """The machine and the command line, under a report."""
    m = machine()
    return (f"\nMachine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}. Command: python benchmarks/{script} "
            + " ".join(sys.argv[1:] if argv is None else argv) + "\n")


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="noisy_method.py's work folder.")
    p.add_argument("--settings", nargs="+", required=True, help="e.g. instance0.4 (folders under --work).")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--T", type=int, nargs="+", default=[4, 8], help="Epochs the detector reads.")
    p.add_argument("--folds", type=int, default=5, help="cleanlab's folds (as noisy_method.py --folds).")
    p.add_argument("--cv-epochs", type=int, nargs="+", default=[1, 4], help="cleanlab's epochs per fold.")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "noisy10k" / "detector_count.md")
    a = p.parse_args(argv)
    results = over_runs(a.work, a.settings, a.seeds, lambda run_dir, _: measure(run_dir, a.T, a.cv_epochs, a.folds))
    text = report(results, a.T, a.cv_epochs, a.folds) + footer("detector_count.py", argv)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    return text


if __name__ == "__main__":
    print(main())
