"""Threshold samples (Pleiss et al., 2020): a seeded 1/(C+1) of the samples trained in a fake class C.

Legend: N training samples, C real classes.

Their AUM, trained against a label no image deserves, gives the data's own threshold for
mislabelled samples (flag ``aum_mislabel``, detector ``aum``).  A recording run draws them
(:func:`draw`), trains and records with C + 1 classes, and writes what it drew into its
store's ``meta.json`` under :data:`META_KEY` (:meth:`ThresholdSamples.to_meta`).  Readers
get them back with :meth:`ThresholdSamples.of_store`, and :func:`data_labels` gives a store's
samples their dataset labels again, which is what manifests refer to.  The store itself only
carries the entry as opaque metadata.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .store import fingerprint

META_KEY = "threshold_samples"
CLASS_NAME = "(threshold samples)"


@dataclass(frozen=True)
class ThresholdSamples:
    """Which samples moved to the fake class ``fake_class`` (= C), and their real labels."""

    fake_class: int
    indices: np.ndarray
    """int64 [n], sorted."""
    labels: np.ndarray
    """int64 [n], the dataset labels of ``indices``."""

    def apply(self, labels_N: np.ndarray) -> np.ndarray:
        """A copy of ``labels_N`` with the threshold samples in the fake class."""
        out = np.array(labels_N, copy=True)
        out[self.indices] = self.fake_class
        return out

    def restore(self, labels_N: np.ndarray) -> np.ndarray:
        """A copy of ``labels_N`` with the threshold samples back in their dataset classes."""
        out = np.array(labels_N, copy=True)
        out[self.indices] = self.labels
        return out

    def to_meta(self) -> dict:
        """The entry a recording run adds to its store's ``meta.json``."""
        return {META_KEY: {"class": int(self.fake_class), "indices": self.indices.tolist(),
                           "labels": self.labels.tolist()}}

    @classmethod
    def of_store(cls, store) -> ThresholdSamples | None:
        """The threshold samples a store was recorded with, None if none."""
        entry = store.meta.get(META_KEY)
        if not entry:
            return None
        return cls(int(entry["class"]), np.asarray(entry["indices"], np.int64), np.asarray(entry["labels"], np.int64))


def draw(labels_N: np.ndarray, n_classes: int, seed: int) -> ThresholdSamples:
    """A seeded ``round(N / (C + 1))`` of the N samples, for the fake class C = ``n_classes``."""
    N = len(labels_N)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED, 17]))
    idx = np.sort(rng.choice(N, int(round(N / (n_classes + 1))), replace=False)).astype(np.int64)
    return ThresholdSamples(int(n_classes), idx, np.asarray(labels_N, np.int64)[idx])


def data_labels(store) -> tuple[np.ndarray, int, dict]:
    """The dataset's labels [N], class count and fingerprint of a store, which manifests refer to.

    The store's own, except in a run with threshold samples: those were recorded in the fake
    last class and get their dataset labels back.
    """
    thr = ThresholdSamples.of_store(store)
    if thr is None:
        return store.labels, store.n_classes, store.fingerprint
    labels = thr.restore(store.labels)
    return labels, thr.fake_class, fingerprint(labels, store.sample_ids)
