"""Default transforms of the built-in datasets.

Kept deliberately plain: to-tensor and per-dataset normalisation, a resize for datasets
of variable-size photographs, and (only when asked) the standard light augmentation of
each dataset family.  Anything else is a ``train_transform``/``test_transform`` the caller
passes.
"""
from __future__ import annotations

from typing import Callable

import torch
from torchvision.transforms import v2

# Per-channel mean and std of the training images, in [0, 1] pixel units (digits: all
# 1,797 images, since its split depends on the seed).
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": ((0.3053,), (0.3760,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    # Photographs of arbitrary content: the ImageNet statistics, as usual.
    "cub200": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

_RESIZED = ("cub200", "imagefolder")
_NATIVE_SIZE = {"mnist": 28, "fashion-mnist": 28, "cifar10": 32, "cifar100": 32}


def default_transform(
    name: str, *, train: bool, image_size: int = 224, augment: bool = False
) -> Callable[[object], torch.Tensor]:
    """The transform :func:`dprune.data.build_dataset` uses unless told otherwise.

    Parameters
    ----------
    name : str
        A dataset name of :data:`dprune.data.DATASET_NAMES`.
    train : bool
        Whether the transform is for the training split (augmentation applies only there).
    image_size : int
        Side of the square images that ``cub200`` and ``imagefolder`` are brought to
        (shorter side resized, then centre-cropped); ignored by fixed-size datasets.
    augment : bool
        Add the usual light augmentation to the training transform: random crop with
        padding (+ horizontal flip, except for MNIST) for small images, random resized crop +
        flip for photographs.  ``digits`` (8x8) has none.

    Returns
    -------
    callable
        Maps a PIL image or a ``[C, H, W]`` uint8/float tensor to a normalised float32
        ``[C, H, W]`` tensor.
    """
    if name not in NORMALISATION:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(NORMALISATION)}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    mean, std = NORMALISATION[name]
    steps: list[Callable] = []
    if name in _RESIZED:
        if train and augment:
            steps += [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
        else:
            steps += [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    elif train and augment and name in _NATIVE_SIZE:
        size = _NATIVE_SIZE[name]
        steps.append(v2.RandomCrop(size, padding=size // 8))
        if name != "mnist":
            # A mirrored digit is not the same digit; a mirrored object or garment is.
            steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)
