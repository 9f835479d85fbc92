"""A wrapper that makes every batch carry the dataset index of each of its samples.

The recorder files each logit under the sample it belongs to, whatever the sampler, the
number of ranks or the subset being trained; so the index must travel with the sample
rather than be reconstructed from batch positions.

Legend: N samples in the wrapped dataset, M selected samples.
"""
from __future__ import annotations

import operator
from typing import Any, Mapping, Sequence

import numpy as np
from torch.utils.data import Dataset

from ..labels import validate_labels


class IndexedDataset(Dataset):
    """Wrap a map-style dataset so ``__getitem__(j)`` returns ``(x, y, i)``.

    ``i`` is the ORIGINAL index in the wrapped dataset, also when only a subset is
    selected, so a retraining run on a pruned manifest records and reports the samples
    under the same indices as the run that scored them.

    Parameters
    ----------
    dataset : map-style dataset of N samples
        ``dataset[i]`` returns ``(x, y)`` (extra items are dropped).  If it has a
        ``labels`` attribute (int [N]), ``labels`` and overrides are checked against it.
    labels_override : array-like of int [N] or mapping {index: label}, optional
        Labels to return instead of the dataset's own: a full array indexed by the
        original index, or a mapping that replaces only the listed samples (the
        manifest's ``relabelled``; needs ``dataset.labels``).
    indices : array-like of int [M], optional
        Original indices to expose, in this order, each at most once; default all N.

    Attributes
    ----------
    dataset : the wrapped dataset
    indices : np.ndarray, int64 [M]
        Original index of each position.
    labels : np.ndarray, int64 [M] or None
        Label returned at each position (overrides applied), or None if the wrapped
        dataset has no ``labels`` and no full override was given.
    """

    def __init__(
        self,
        dataset: Dataset,
        labels_override: Sequence[int] | np.ndarray | Mapping[int, int] | None = None,
        *,
        indices: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        n = len(dataset)
        base_labels = getattr(dataset, "labels", None)
        full_labels_N = None if base_labels is None else np.asarray(base_labels, dtype=np.int64)
        if full_labels_N is not None and full_labels_N.shape != (n,):
            raise ValueError(
                f"dataset.labels has shape {full_labels_N.shape}, expected ({n},)")
        num_classes = getattr(dataset, "num_classes", None)

        self._override = labels_override is not None
        if isinstance(labels_override, Mapping):
            if full_labels_N is None:
                raise ValueError(
                    "a {index: label} override needs a dataset with a `labels` attribute; "
                    "pass a full label array instead")
            full_labels_N = full_labels_N.copy()
            for key, value in labels_override.items():
                idx, label = _as_int(key, "override index"), _as_int(value, "override label")
                if not 0 <= idx < n:
                    raise ValueError(f"override index {idx} out of range for a dataset of {n}")
                full_labels_N[idx] = label
        elif labels_override is not None:
            override_N = np.asarray(labels_override)
            if override_N.shape != (n,):
                raise ValueError(
                    f"labels_override must have shape ({n},) (one label per sample of the "
                    f"wrapped dataset, by original index), got {override_N.shape}")
            full_labels_N = override_N
        if self._override:
            full_labels_N = validate_labels(full_labels_N, num_classes, what="override labels")
            if full_labels_N.size and full_labels_N.min() < 0:
                raise ValueError(f"override labels must be >= 0, got {full_labels_N.min()}")

        if indices is None:
            indices_M = np.arange(n, dtype=np.int64)
        else:
            indices_M = np.asarray(indices)
            if indices_M.ndim != 1:
                raise ValueError(f"indices must be 1-D, got shape {indices_M.shape}")
            if indices_M.size and not np.issubdtype(indices_M.dtype, np.integer):
                raise ValueError(f"indices must be integers, got dtype {indices_M.dtype}")
            indices_M = indices_M.astype(np.int64)
            if indices_M.size and (indices_M.min() < 0 or indices_M.max() >= n):
                raise ValueError(
                    f"indices must lie in [0, {n}), got range "
                    f"[{indices_M.min()}, {indices_M.max()}]")
            uniq, counts = np.unique(indices_M, return_counts=True)
            if (counts > 1).any():
                raise ValueError(
                    f"indices must be unique; {int(uniq[counts > 1][0])} appears "
                    f"{int(counts.max())} times")

        self.dataset = dataset
        self.indices = indices_M
        self._full_labels_N = full_labels_N
        self.labels = None if full_labels_N is None else full_labels_N[indices_M]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[Any, int, int]:
        """Return ``(x, y, i)`` for position ``j``; ``i`` is the original index."""
        j = operator.index(j)
        if not 0 <= j < len(self.indices):
            raise IndexError(f"position {j} out of range for {len(self.indices)} samples")
        i = int(self.indices[j])
        x, y = self.dataset[i][:2]
        if self._override:
            y = int(self._full_labels_N[i])
        return x, y, i

    @property
    def sample_ids(self) -> list[str]:
        """Ids of the selected samples (``dataset.sample_ids`` in position order)."""
        ids = self.dataset.sample_ids
        return [ids[i] for i in self.indices]

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def in_channels(self) -> int:
        return self.dataset.in_channels


def _as_int(value: Any, what: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an int, got {value!r}") from None
