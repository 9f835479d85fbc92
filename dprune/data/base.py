"""The dataset interface every classification loader returns.

A ``LabeledImageDataset`` is a map-style torch ``Dataset`` that also exposes, without
touching any image, what the rest of dprune needs: the labels (for samplers, noise
injection, the store's fingerprint), stable sample ids (so a manifest can name files),
the number of classes and input channels (to build the model).

Legend: N samples, C channels, H x W image size.
"""
from __future__ import annotations

import abc
import operator
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from ..labels import check_class_count, validate_labels

Transform = Callable[[object], object]


def to_float_chw(image: object) -> torch.Tensor:
    """Turn what a transform returned into a plain float32 ``[C, H, W]`` tensor.

    PIL images and ``uint8`` tensors are scaled to [0, 1]; float tensors are only cast, so
    a transform that already normalised keeps its values.  A ``[H, W]`` tensor gains a
    channel axis.  torchvision ``tv_tensors`` subclasses are unwrapped, so batches collate
    to plain tensors.
    """
    if isinstance(image, Image.Image):
        image = TF.pil_to_tensor(image)
    if not isinstance(image, torch.Tensor):
        raise TypeError(
            f"a dataset transform must return a PIL image or a tensor, got {type(image).__name__}")
    image = image.as_subclass(torch.Tensor)
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim != 3:
        raise ValueError(f"expected an image of shape [C, H, W], got shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image.to(torch.float32).div_(255.0)
    if image.is_floating_point():
        return image.to(torch.float32)
    raise ValueError(f"expected a uint8 or floating point image, got dtype {image.dtype}")


class LabeledImageDataset(Dataset, abc.ABC):
    """Map-style image classification dataset with its labels and ids known up front.

    Subclasses implement :meth:`load_image`; ``__getitem__`` applies the optional
    ``transform`` to what it returns and converts the result with :func:`to_float_chw`.

    Parameters
    ----------
    labels : array-like of int, shape [N]
        Class of every sample, in ``[0, num_classes)``.
    sample_ids : sequence of str, length N
        Unique, stable id of every sample: its path relative to the dataset root, or a
        name such as ``cifar100/train/00042``.
    num_classes : int
        Number of classes K (may exceed ``labels.max() + 1``: a split can miss a class).
    in_channels : int
        Channels of the images before any transform (1 for grey, 3 for RGB).
    transform : callable, optional
        Applied to the PIL image or ``uint8``/float ``[C, H, W]`` tensor that
        :meth:`load_image` returns (torchvision v2 transforms accept both).
    class_names : sequence of str, optional
        Name of every class, length ``num_classes``.

    Attributes
    ----------
    labels : np.ndarray, int64 [N]
    sample_ids : list[str], length N
    num_classes, in_channels : int
    class_names : list[str] or None
    transform : callable or None
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        sample_ids: Sequence[str],
        *,
        num_classes: int,
        in_channels: int,
        transform: Transform | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        check_class_count(num_classes, "dataset")
        if isinstance(in_channels, bool) or not isinstance(in_channels, (int, np.integer)) \
                or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        labels_N = validate_labels(labels, num_classes)
        ids = list(sample_ids)
        if len(ids) != len(labels_N):
            raise ValueError(f"got {len(ids)} sample ids for {len(labels_N)} labels")
        if not all(isinstance(s, str) for s in ids):
            raise ValueError("sample ids must all be str")
        if len(set(ids)) != len(ids):
            dup = next(s for s, n in Counter(ids).items() if n > 1)
            raise ValueError(f"sample ids must be unique; {dup!r} appears more than once")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"got {len(class_names)} class names for num_classes={num_classes}")
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable or None, got {transform!r}")
        self.labels = labels_N
        self.sample_ids = ids
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    @abc.abstractmethod
    def load_image(self, i: int) -> Image.Image | torch.Tensor:
        """Return sample ``i`` untransformed: a PIL image or a ``[C, H, W]`` tensor."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """Return ``(image float32 [C, H, W], label)`` of sample ``i``."""
        i = operator.index(i)
        if not 0 <= i < len(self):
            raise IndexError(f"sample index {i} out of range for a dataset of {len(self)}")
        image = self.load_image(i)
        if self.transform is not None:
            image = self.transform(image)
        return to_float_chw(image), int(self.labels[i])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(N={len(self)}, num_classes={self.num_classes}, "
                f"in_channels={self.in_channels})")


class TensorImageDataset(LabeledImageDataset):
    """Images held in memory as one tensor (CIFAR, MNIST, digits).

    Parameters
    ----------
    images : torch.Tensor, uint8 or float [N, C, H, W]
        ``uint8`` in [0, 255] or float in [0, 1].
    labels, sample_ids, num_classes, transform, class_names
        As in :class:`LabeledImageDataset`; ``in_channels`` is ``C``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: Sequence[int] | np.ndarray,
        sample_ids: Sequence[str],
        *,
        num_classes: int,
        transform: Transform | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(f"images must be a tensor [N, C, H, W], got {shape}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
        if images.shape[0] != len(labels):
            raise ValueError(f"got {images.shape[0]} images for {len(labels)} labels")
        super().__init__(labels, sample_ids, num_classes=num_classes,
                         in_channels=images.shape[1], transform=transform,
                         class_names=class_names)
        self.images = images

    def load_image(self, i: int) -> torch.Tensor:
        return self.images[i]


class FileImageDataset(LabeledImageDataset):
    """Images read lazily from files with PIL and converted to RGB (ImageFolder, CUB).

    Parameters
    ----------
    paths : sequence of path-like, length N
        Files to read, already checked to lie under the dataset root
        (see :func:`dprune.data.paths.resolve_under`).
    labels, sample_ids, num_classes, transform, class_names
        As in :class:`LabeledImageDataset`; ``in_channels`` is 3.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: Sequence[int] | np.ndarray,
        sample_ids: Sequence[str],
        *,
        num_classes: int,
        transform: Transform | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"got {len(paths)} paths for {len(labels)} labels")
        super().__init__(labels, sample_ids, num_classes=num_classes, in_channels=3,
                         transform=transform, class_names=class_names)
        self.paths = [Path(p) for p in paths]

    def load_image(self, i: int) -> Image.Image:
        return read_rgb(self.paths[i], self.sample_ids[i])


def read_rgb(path: Path, sample_id: str) -> Image.Image:
    """The image file at ``path`` as an RGB PIL image; an unreadable file is a ValueError."""
    try:
        with Image.open(path) as im:
            # Grey and palette images occur in CUB, ReID sets and scraped folders; the models
            # expect a fixed channel count, so everything becomes RGB.
            return im.convert("RGB")
    except (OSError, Image.DecompressionBombError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read image {path} (sample {sample_id!r}): {e}") from e


#: What every classification loader returns: ``(train, test)``.
Split = tuple[LabeledImageDataset, LabeledImageDataset]
