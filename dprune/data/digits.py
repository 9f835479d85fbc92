"""scikit-learn's bundled 8x8 digits, the default dataset when no data is at hand.

Legend: N samples.
"""
from __future__ import annotations

import numpy as np
import torch

from dprune.data.base import Split, TensorImageDataset, Transform

def load_digits_dataset(
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    train_transform: Transform | None = None,
    test_transform: Transform | None = None,
) -> Split:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), split with a seed.

    Parameters
    ----------
    seed : int
        Seed of the stratified train/test split.
    test_fraction : float
        Fraction of each class held out for testing, in (0, 1).
    train_transform, test_transform : callable, optional
        Applied to the float ``[1, 8, 8]`` image tensors.

    Returns
    -------
    train, test : TensorImageDataset
        Images float32 ``[1, 8, 8]`` in [0, 1]; sample ids ``digits/NNNNN`` with the index in
        ``sklearn.datasets.load_digits()``, so an id names the same image for every seed.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not isinstance(test_fraction, (int, float)) or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    bunch = load_digits()
    # The pixels are counts of set bits in 4x4 blocks, 0..16.
    images_N188 = torch.from_numpy((bunch.images / 16.0).astype(np.float32)).unsqueeze(1)
    labels_N = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels_N)), test_size=test_fraction, stratify=labels_N, random_state=seed)
    names = [str(c) for c in range(10)]

    def split(idx: np.ndarray, transform: Transform | None) -> TensorImageDataset:
        idx = np.sort(idx)
        return TensorImageDataset(
            images_N188[idx], labels_N[idx], [f"digits/{i:05d}" for i in idx],
            num_classes=10, transform=transform, class_names=names)

    return split(train_idx, train_transform), split(test_idx, test_transform)
