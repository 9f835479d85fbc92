"""Loaders of the image classification datasets, in their release layouts.

Every loader returns ``(train, test)`` as :class:`LabeledImageDataset` and applies no
transform unless given one (images come out as float [0, 1] tensors);
:func:`build_dataset` is the one entry point that adds the default transforms.  Nothing is
ever downloaded: datasets are read from a folder the user points at, except scikit-learn's
bundled ``digits``, the default when no data is at hand.  One module per source: :mod:`~dprune.data.digits`, :mod:`~dprune.data.mnist` (idx files),
:mod:`~dprune.data.cifar`, :mod:`~dprune.data.cub`, :mod:`~dprune.data.imagefolder`.
"""
from __future__ import annotations

import os
from typing import Callable

from dprune.data.base import Split, Transform
from dprune.data.cifar import load_cifar
from dprune.data.cub import load_cub200
from dprune.data.digits import load_digits_dataset
from dprune.data.imagefolder import load_imagefolder
from dprune.data.mnist import FASHION_MNIST_ROOT, load_mnist
from dprune.data.transforms import default_transform

DATASET_NAMES = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "cub200", "imagefolder")


def build_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    train_transform: Transform | None | str = "default",
    test_transform: Transform | None | str = "default",
    image_size: int = 224,
    augment: bool = False,
) -> Split:
    """Load a dataset by name, with default transforms unless told otherwise.

    Parameters
    ----------
    name : str
        One of :data:`DATASET_NAMES`: ``digits`` (bundled, no root), ``fashion-mnist``
        (root defaults to :data:`FASHION_MNIST_ROOT`), ``mnist``, ``cifar10``,
        ``cifar100``, ``cub200``, ``imagefolder``.
    root : str or path-like, optional
        The dataset folder (see each ``load_*`` function for its layout).
    seed : int
        Seed of the train/test split of ``digits``; the other datasets have fixed splits.
    train_transform, test_transform : callable, None or "default"
        ``"default"``: :func:`dprune.data.transforms.default_transform` (to tensor and
        normalise; resize and centre-crop for ``cub200``/``imagefolder``).  ``None``: no
        transform, images as float [0, 1] tensors (PIL sizes vary for photographs).
    image_size : int
        Square side for ``cub200``/``imagefolder`` default transforms.
    augment : bool
        Whether the default training transform augments (see ``default_transform``).

    Returns
    -------
    train, test : LabeledImageDataset

    Raises
    ------
    ValueError
        For an unknown name (listing the valid ones), a root given to ``digits`` or
        missing for a dataset that needs one.
    FileNotFoundError
        Naming the missing folder or file when a layout is incomplete.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if name == "digits" and root is not None:
        raise ValueError(f"the digits dataset is bundled with scikit-learn and takes no root, "
                         f"got root={str(root)!r}")
    if root is None and name == "fashion-mnist":
        root = FASHION_MNIST_ROOT
    if root is None and name != "digits":
        raise ValueError(f"dataset {name!r} needs root= (the folder holding its files)")
    transforms = []
    for which, given in (("train_transform", train_transform), ("test_transform", test_transform)):
        if isinstance(given, str):
            if given != "default":
                raise ValueError(f"{which} must be a callable, None or 'default', got {given!r}")
            given = default_transform(name, train=which == "train_transform",
                                      image_size=image_size, augment=augment)
        elif given is not None and not callable(given):
            raise ValueError(f"{which} must be a callable, None or 'default', got {given!r}")
        transforms.append(given)
    kw = dict(train_transform=transforms[0], test_transform=transforms[1])
    loaders: dict[str, Callable[[], Split]] = {
        "digits": lambda: load_digits_dataset(seed=seed, **kw),
        "fashion-mnist": lambda: load_mnist(root, name="fashion-mnist", **kw),
        "mnist": lambda: load_mnist(root, name="mnist", **kw),
        "cifar10": lambda: load_cifar(root, 10, **kw),
        "cifar100": lambda: load_cifar(root, 100, **kw),
        "cub200": lambda: load_cub200(root, **kw),
        "imagefolder": lambda: load_imagefolder(root, **kw),
    }
    return loaders[name]()
