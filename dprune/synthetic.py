"""A synthetic logit trajectory with known easy, hard and mislabelled samples.

Used by ``dprune synth``, the tests and the benchmarks when no training run is at hand.
Each sample has a difficulty; its logit for the true class grows over the epochs at a rate
that falls with difficulty, plus Gaussian noise.  A fraction of the given labels is wrong:
the model learns the true class first and only late, weakly, memorises the wrong label, as
early trajectories of real networks do.
"""
from __future__ import annotations

import numpy as np


def synthetic_trajectory(n_samples: int, n_classes: int, n_epochs: int, *, noise_rate: float = 0.1,
                         seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """Return ``logits [E, N, C]``, ``counts [E, N]`` (all ones), ``labels [N]``, ``true_labels [N]``."""
    if n_samples < 1 or n_classes < 2 or n_epochs < 1:
        raise ValueError(f"need n_samples >= 1, n_classes >= 2, n_epochs >= 1; got {n_samples}, {n_classes}, {n_epochs}")
    if not 0 <= noise_rate <= 1:
        raise ValueError(f"noise_rate must be in [0, 1], got {noise_rate}")
    rng = np.random.default_rng(seed)
    true = rng.integers(0, n_classes, n_samples)
    labels = true.copy()
    flip = rng.permutation(n_samples)[: int(round(noise_rate * n_samples))]
    labels[flip] = (true[flip] + rng.integers(1, n_classes, len(flip))) % n_classes
    difficulty = rng.beta(2, 5, n_samples)
    t = (np.arange(1, n_epochs + 1) / n_epochs)[:, None]
    logits = rng.normal(0, 1.0, (n_epochs, n_samples, n_classes))
    rows = np.arange(n_samples)
    logits[:, rows, true] += 6.0 * (1 - difficulty) * t
    wrong = labels != true
    logits[:, rows[wrong], labels[wrong]] += 2.0 * t**3
    return {"logits": logits.astype(dtype), "counts": np.ones((n_epochs, n_samples), np.int32),
            "labels": labels, "true_labels": true}
