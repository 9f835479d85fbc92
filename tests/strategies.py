"""Random trajectories with awkward shapes, for the property tests."""
import numpy as np


def random_trajectory(seed, E, N, C, *, p_unobserved=0.3, max_count=3, nonfinite=False, scale=4.0):
    rng = np.random.default_rng(seed)
    z = (rng.normal(0, scale, (E, N, C))).astype(np.float32)
    counts = rng.integers(1, max_count + 1, (E, N)).astype(np.int32)
    counts[rng.random((E, N)) < p_unobserved] = 0
    if N > 1:
        counts[:, rng.integers(N)] = 0  # a sample never observed
    labels = rng.integers(0, C, N)
    if nonfinite:
        e, i = rng.integers(E), rng.integers(N)
        z[e, i, rng.integers(C)] = rng.choice([np.nan, np.inf, -np.inf])
        counts[e, i] = max(1, counts[e, i])
    return z, counts, labels
