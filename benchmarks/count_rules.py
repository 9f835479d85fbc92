"""How many to flag: count rules for the detector's margin ranking, on recorded noisy runs.

The development table of "the detector's count from hand-checked labels" in RESULTS.md.  The
ranking is the default detector's (the label margin of the soft label of the first T epochs);
each rule gives a count n, and the flags are the n lowest margins.  F1 (%) against the
injected flips, for the counts:

- ``joint``: the default detector's own flags (the confident joint's off-diagonal count);
- ``argmax``: samples whose soft-label argmax is not their label;
- ``expected``: sum_i (1 - p_iy), the soft label read as each label's posterior;
- ``mixture``: the low component's share of a two-Gaussian mixture fitted to the logit margin;
- ``true``: the number of flips (the count given);
- ``checked``: the share of flips among ``--checked`` samples drawn uniformly, times N (mean
  and 5th percentile of the F1 over ``--draws`` draws).

Nothing is trained.

    OMP_NUM_THREADS=1 python benchmarks/count_rules.py runs/bench/noisy/instance0.4/seed0/noisy ...
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import prf, store_and_truth  # noqa: E402

from dprune.scoring import score_store  # noqa: E402


def counts_and_f1(run_dir: Path, T: int, m: int, draws: int) -> dict:
    """``{rule: (count, F1 %)}`` (``checked``: (mean F1, 5th percentile)) for one run at T."""
    from sklearn.mixture import GaussianMixture

    store, truth = store_and_truth(run_dir)
    flipped, y = truth["flipped"].astype(bool), store.labels
    N, r = len(y), np.arange(len(y))
    # The default detector's flags, its label margin and p at the label (of the soft label).
    default, _ = score_store(store, methods=["confident"], first_epochs=T)
    margin = default["label_margin"]
    logits, _ = store.read(0, N, list(range(T)))
    z = logits.astype(np.float64).mean(0)
    others_z = z.copy()
    others_z[r, y] = -np.inf
    logit_margin = z[r, y] - others_z.max(1)
    hits = np.cumsum(flipped[np.argsort(margin, kind="stable")])

    def f1(n: int) -> float:
        return 100 * 2 * (hits[n - 1] if n else 0) / (n + flipped.sum())

    gmm = GaussianMixture(2, random_state=0).fit(logit_margin[:, None])
    low = int(np.argmin(gmm.means_.ravel()))
    n = {"joint": int(default["confident"].sum()), "argmax": int((margin < 0).sum()),
         "expected": int(round((1 - default["p_avg_label"].astype(np.float64)).sum())),
         "mixture": int(round(gmm.predict_proba(logit_margin[:, None])[:, low].sum())), "true": int(flipped.sum())}
    out = {k: (v, round(f1(v), 1)) for k, v in n.items()}
    out["joint"] = (n["joint"], round(100 * prf(default["confident"], flipped)["f1"], 1))
    rng = np.random.default_rng(0)
    checked = [f1(round(flipped[rng.choice(N, m, replace=False)].mean() * N)) for _ in range(draws)]
    out["checked"] = (round(float(np.mean(checked)), 1), round(float(np.percentile(checked, 5)), 1))
    return out


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="Recorded noisy runs (folders with trajectory/ and label_noise.npz).")
    p.add_argument("--T", type=int, default=8, help="Epochs the detector reads.")
    p.add_argument("--checked", type=int, default=500)
    p.add_argument("--draws", type=int, default=200)
    a = p.parse_args(argv)
    lines = []
    for run in a.runs:
        got = counts_and_f1(run, a.T, a.checked, a.draws)
        lines.append(f"{run}: " + "; ".join(f"{k} {v[0]:,}: {v[1]}" if k != "checked" else
                                             f"checked (mean, 5th percentile) {v[0]}, {v[1]}" for k, v in got.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
