"""Hypothesis H-soft (benchmarks/RESULTS.md): confident learning fed the soft label against fed p-bar.

For each noisy run given (a ``dprune train`` run folder with ``trajectory/`` and
``label_noise.npz``), and each T, the default confident-learning rule (``margin``, agree 0.5)
is run twice on the first T recorded epochs:

- on p-bar = mean_t softmax(z_t), what ``dprune score``'s ``confident`` reads;
- on the soft label softmax(mean_t z_t), what the entropy score reads.

It prints one JSON line per run and T: F1, precision and recall of each against the injected
flips, and the difference of the F1s in points.

    python benchmarks/detector_input.py RUN [RUN ...] --T 4 8
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import prf  # noqa: E402

from dprune.scoring.confident import confident_learning  # noqa: E402
from dprune.store import open_store  # noqa: E402


def softmax_NC(z_NC: np.ndarray) -> np.ndarray:
    z = z_NC - z_NC.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def inputs(logits_ENC: np.ndarray, counts_EN: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p-bar [N, C], soft label [N, C], valid [N]) of the first T epochs; a sample must be observed in all T."""
    z = logits_ENC[:T].astype(np.float32)
    valid = (counts_EN[:T] > 0).all(0) & np.isfinite(z).all((0, 2))
    pbar = np.zeros(z.shape[1:], np.float32)
    for e in range(T):
        pbar += softmax_NC(z[e])
    return pbar / T, softmax_NC(z.mean(0)).astype(np.float32), valid


def compare(run: Path, Ts: list[int]) -> list[dict]:
    store = open_store(run / "trajectory")
    with np.load(run / "label_noise.npz") as f:
        flipped = f["flipped"]
        if not np.array_equal(f["noisy_labels"], store.labels):
            raise SystemExit(f"{run}: the store's labels are not the run's noisy labels")
    logits, counts = store.read(0, store.n_samples, epochs=range(max(Ts)))
    rows = []
    for T in Ts:
        pbar, soft, valid = inputs(logits, counts, T)
        got = {name: prf(confident_learning(p, store.labels, valid)["confident"], flipped)
               for name, p in (("pbar", pbar), ("soft", soft))}
        rows.append({"run": str(run), "T": T, "n_flipped": int(flipped.sum()), **got,
                     "soft_minus_pbar_f1_points": round(100 * (got["soft"]["f1"] - got["pbar"]["f1"]), 2)})
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--T", type=int, nargs="+", default=[4, 8])
    a = p.parse_args(argv)
    for run in a.runs:
        for row in compare(run, a.T):
            print(json.dumps(row))


if __name__ == "__main__":
    main()
