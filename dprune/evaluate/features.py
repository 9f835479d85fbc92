"""Features of a ReID split: run a model over a loader, with the usual flip augmentation.

Legend: N images of the split, D feature dimension, B batch.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class ReIDFeatures(NamedTuple):
    """Features of one split, ordered by dataset index."""

    features: np.ndarray
    """float32 [N, D]"""
    pids: np.ndarray
    """int64 [N]"""
    camids: np.ndarray
    """int64 [N]"""
    indices: np.ndarray
    """int64 [N], dataset indices, increasing"""


@torch.no_grad()
def extract_features(model: torch.nn.Module, loader, device: str | torch.device,
                     *, flip: bool = True) -> ReIDFeatures:
    """Run ``model`` in eval mode over ``loader`` and collect its features.

    Parameters
    ----------
    model : torch.nn.Module
        Maps images ``[B, C, H, W]`` to features ``[B, D]`` in eval mode.  Its training
        mode is restored afterwards.
    loader : iterable
        Yields ``(images [B, C, H, W], pids [B], camids [B], indices [B])``, as a
        ``DataLoader`` over :class:`dprune.data.reid.ReIDImageDataset` does; each index
        at most once (any order).
    device : str or torch.device
        Where the model runs.
    flip : bool
        Average the features of each image and of its horizontal mirror (the usual
        test-time augmentation of ReID baselines).

    Returns
    -------
    ReIDFeatures
        Sorted by dataset index, on the CPU.
    """
    was_training = model.training
    model.eval()
    feats, pids, cams, idxs = [], [], [], []
    try:
        for images, pid, cam, idx in loader:
            images = images.to(device)
            out = model(images)
            if not isinstance(out, torch.Tensor) or out.ndim != 2 or len(out) != len(images):
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"the model must return features [B, D] in eval mode; got "
                                 f"{shape} for images {tuple(images.shape)}")
            if flip:
                out = (out + model(images.flip(-1))) / 2
            feats.append(out.float().cpu())
            pids.append(torch.as_tensor(pid))
            cams.append(torch.as_tensor(cam))
            idxs.append(torch.as_tensor(idx))
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("the loader yielded no batch")
    idx_N = torch.cat(idxs).to(torch.int64).numpy()
    if len(np.unique(idx_N)) != len(idx_N):
        raise ValueError("the loader yielded some dataset index more than once (use a "
                         "sequential sampler without padding for evaluation)")
    order = np.argsort(idx_N, kind="stable")
    return ReIDFeatures(torch.cat(feats).numpy()[order],
                        torch.cat(pids).to(torch.int64).numpy()[order],
                        torch.cat(cams).to(torch.int64).numpy()[order],
                        idx_N[order])
