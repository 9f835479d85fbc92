"""The detector's count from hand-checked labels, against cleanlab (the test declared in RESULTS.md
at 2026-12-07 23:40 UTC).

On each recorded noisy run of ``noisy_method.py`` (a work folder holding
``<setting>/seed<s>/noisy`` with its trajectory and ``label_noise.npz``, and cleanlab's cached
5-fold probabilities ``cleanlab-5x<e>/probs.npz``), F1 of the flags against the injected flips:

- dprune's default detector (the confident joint's count) on the first T epochs;
- the same ranking with ``confident.rate`` set to the share of wrong labels among ``--checked``
  training samples drawn uniformly (the injected truth stands in for the person who checks
  them): the draw seeded by the run's seed, through ``score_store`` (what a user gets), and the
  mean over ``--draws`` draws (its expectation);
- cleanlab's best ``filter_by`` (of all seven) on its out-of-sample probabilities, and cleanlab's
  normalized margin flagging the seeded draw's count (cleanlab given the same rate).

By default T = 4 is paired with cleanlab's 5 x 1 folds (the same cost), T = 8 with 5 x 4
(``--pairs 4:1 8:4``).  Nothing is trained.

    OMP_NUM_THREADS=1 python benchmarks/detector_checked.py --work runs/bench/noisy \\
        --settings symmetric0.3 class0.3 instance0.3 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, checked_rate, paired_verdict, prf, store_and_truth  # noqa: E402
from detector_count import footer, over_runs, top_n  # noqa: E402
from noisy_method import CLEANLAB_FILTERS  # noqa: E402

from dprune.scoring import score_store  # noqa: E402



def measure(run_dir: Path, m: int, draws: int, seed: int, pairs, folds: int) -> dict:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    store, truth = store_and_truth(run_dir / "noisy")
    flipped = truth["flipped"].astype(bool)
    rate = checked_rate(flipped, m, np.random.default_rng([seed, m]))
    out = {"n_flipped": int(flipped.sum()), "checked_rate": rate, "rows": {}}
    for T, cv in pairs:
        default, _ = score_store(store, methods=["confident"], first_epochs=T)
        given, _ = score_store(store, methods=["confident"], first_epochs=T, params={"confident": {"rate": rate}})
        badness = -default["label_margin"]
        rng = np.random.default_rng([seed, m, 1])
        over_draws = [prf(top_n(badness, round(checked_rate(flipped, m, rng) * len(flipped))), flipped)["f1"]
                      for _ in range(draws)]
        row = {"default": prf(default["confident"], flipped), "checked": prf(given["confident"], flipped),
               "checked_mean_f1": float(np.mean(over_draws)), "checked_p5_f1": float(np.percentile(over_draws, 5))}
        with np.load(run_dir / f"cleanlab-{folds}x{cv}" / "probs.npz") as z:
            probs = z["probs"]
        rules = {r: prf(find_label_issues(store.labels, probs, filter_by=r, n_jobs=1), flipped)["f1"]
                 for r in CLEANLAB_FILTERS}
        best = max(rules, key=rules.get)
        cl_badness = -get_label_quality_scores(store.labels, probs, method="normalized_margin")
        row["cleanlab"] = {"cv": f"{folds}x{cv}", "best_rule": best, "best_f1": rules[best], "rules": rules,
                           "same_count": prf(top_n(cl_badness, int(given["confident"].sum())), flipped)}
        out["rows"][f"T{T}"] = row
    return out


def report(results: dict, m: int, draws: int, pairs, folds: int) -> str:
    lines = [f"# The detector's count from {m} checked labels, against cleanlab", "",
             "F1 (%) of the flags against the injected flips, mean over the seeds; Δ in points, paired over the "
             "seeds, with the verdict of `_common.paired_verdict` (one-sided paired t-test, p < 0.05). "
             f"`checked`: `confident.rate` = the share of wrong labels among {m} samples drawn uniformly, the "
             f"draw seeded by the run's seed; beside it the mean over {draws} draws. cleanlab's best: the best of "
             "its seven `filter_by` rules in each run (which rule, per seed, in the last column).", "",
             "| setting | T (cleanlab folds) | default | checked (mean of draws; their 5th percentile) | cleanlab's best | "
             "checked − best | default − best | cleanlab, checked count | checked − cleanlab, same count | "
             "best rules |", "|---|---|---|---|---|---|---|---|---|---|"]
    for setting, by_seed in results.items():
        rows = list(by_seed.values())
        for T, cv in pairs:
            r = [x["rows"][f"T{T}"] for x in rows]
            d = [x["default"]["f1"] * 100 for x in r]
            c = [x["checked"]["f1"] * 100 for x in r]
            b = [x["cleanlab"]["best_f1"] * 100 for x in r]
            s = [x["cleanlab"]["same_count"]["f1"] * 100 for x in r]

            def delta(a, z):
                diffs = [p - q for p, q in zip(a, z)]
                v, p = paired_verdict(diffs)
                return f"{np.mean(diffs):+.1f}: {v} (p = {p:.3f})"

            lines.append(f"| {setting} | {T} ({folds} × {cv}) | {np.mean(d):.1f} | {np.mean(c):.1f} "
                         f"({np.mean([x['checked_mean_f1'] for x in r]) * 100:.1f}; {np.mean([x['checked_p5_f1'] for x in r]) * 100:.1f}) | "
                         f"{np.mean(b):.1f} | "
                         f"{delta(c, b)} | {delta(d, b)} | {np.mean(s):.1f} | {delta(c, s)} | "
                         f"{', '.join(x['cleanlab']['best_rule'] for x in r)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="noisy_method.py's work folder.")
    p.add_argument("--settings", nargs="+", required=True, help="e.g. instance0.3 (folders under --work).")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--checked", type=int, default=500, help="Labels checked by hand (drawn uniformly).")
    p.add_argument("--draws", type=int, default=100, help="Draws of the checked sample for the mean.")
    p.add_argument("--folds", type=int, default=5, help="cleanlab's folds (as noisy_method.py --folds).")
    p.add_argument("--pairs", nargs="+", default=["4:1", "8:4"],
                   help="T:E pairs: dprune reading T epochs against cleanlab's folds of E epochs each.")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "detector30" / "checked.md")
    a = p.parse_args(argv)
    pairs = [tuple(int(x) for x in pair.split(":")) for pair in a.pairs]
    results = over_runs(a.work, a.settings, a.seeds,
                        lambda run_dir, seed: measure(run_dir, a.checked, a.draws, seed, pairs, a.folds))
    text = report(results, a.checked, a.draws, pairs, a.folds) + footer("detector_checked.py", argv)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    a.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    return text


if __name__ == "__main__":
    print(main())
