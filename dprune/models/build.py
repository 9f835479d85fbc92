"""Building the classifiers by name, and loading their weights from local files only.

Nothing here downloads: torchvision models are built with ``weights=None`` and a
``weights`` argument is a path on disk.  Weight files are read with
``torch.load(weights_only=True)``, which refuses pickled objects other than tensors and
plain containers, so a checkpoint from a stranger cannot run code when it is loaded.
"""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Mapping

import torch
from torch import nn
from torchvision import models as tvm

from dprune.models.small_cnn import SmallCNN

MODEL_NAMES = ("resnet18", "resnet50", "small_cnn")

#: Inputs at most this many pixels wide get the CIFAR stem (3x3 stride-1 conv, no max-pool):
#: the ImageNet stem would shrink a 32x32 image to 8x8 before the first residual block.
SMALL_INPUT_MAX = 32


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    weights: str | os.PathLike | None = None,
    *,
    image_size: int = 224,
) -> nn.Module:
    """Build a classifier with random initialisation, optionally loading local weights.

    Parameters
    ----------
    name : {"resnet18", "resnet50", "small_cnn"}
        ``resnet18``/``resnet50``: torchvision ResNets; ``small_cnn``: :class:`SmallCNN`.
    num_classes : int
        Number of classes K (outputs of the classifier).
    in_channels : int
        Channels of the input images (1 for grey, 3 for RGB).
    weights : str or path-like, optional
        A local state dict file: ``torch.save`` format (read with ``weights_only=True``) or
        ``.safetensors`` (needs the ``safetensors`` package).  See :func:`load_weights`.
    image_size : int
        Side of the input images.  ResNets get the CIFAR stem for images of at most
        :data:`SMALL_INPUT_MAX` pixels, the ImageNet stem (7x7 stride-2 conv, max-pool)
        otherwise.  ``small_cnn`` accepts any size.

    Returns
    -------
    torch.nn.Module
        Maps ``[B, in_channels, H, W]`` float images to logits ``[B, num_classes]``.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    for what, value in (("num_classes", num_classes), ("in_channels", in_channels),
                        ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be a positive int, got {value!r}")
    if name == "small_cnn":
        model: nn.Module = SmallCNN(in_channels, num_classes)
    else:
        model = _resnet(name, num_classes, in_channels, image_size)
    if weights is not None:
        load_weights(model, weights)
    return model


def _resnet(name: str, num_classes: int, in_channels: int, image_size: int) -> tvm.ResNet:
    constructor = {"resnet18": tvm.resnet18, "resnet50": tvm.resnet50}[name]
    model = constructor(weights=None, num_classes=num_classes)
    if image_size <= SMALL_INPUT_MAX:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    # torchvision initialises its convolutions this way; a replaced stem should match.
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file without executing anything in it.

    Parameters
    ----------
    path : str or path-like
        ``.safetensors`` file, or a ``torch.save`` file holding a state dict, or a dict
        with the state dict under ``"state_dict"`` or ``"model"`` (common checkpoints).
        A ``module.`` prefix on every key (saved from DistributedDataParallel) is removed.

    Returns
    -------
    dict[str, torch.Tensor]
        On the CPU.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file holds pickled objects other than tensors and plain containers (they
        are refused, never called), is not a checkpoint, or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ValueError(f"{path} is a .safetensors file, but the safetensors package is "
                             f"not installed") from None
        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{path} is not a readable safetensors file: {e}") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = next((line.strip() for line in str(e).splitlines()
                        if "unsupported" in line.lower()), "it names a forbidden global")
        raise ValueError(
            f"refusing to load weights from {path}: it holds pickled objects other than "
            f"tensors and plain containers ({refused}). Re-save it as a plain state dict "
            f"with torch.save(model.state_dict(), path).") from None
    except Exception as e:  # torch.load fails with KeyError, RuntimeError, ... on junk
        raise ValueError(f"{path} is not a torch checkpoint: {type(e).__name__}: {e}") from e
    return _unwrap_state_dict(obj, path)


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    candidates = [obj]
    if isinstance(obj, Mapping):
        candidates += [obj[k] for k in ("state_dict", "model") if k in obj]
    state = next((dict(c) for c in candidates if _is_state_dict(c)), None)
    if state is None:
        keys = sorted(map(str, obj))[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{path} holds no state dict (a mapping of names to tensors, directly "
                         f"or under 'state_dict'/'model'); found {keys}")
    prefix = "module."
    if all(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a local state dict file into ``model``, in place.

    Every parameter and buffer must match by name and shape, except the classifier (the
    last ``nn.Linear``): if the file's classifier has another shape (weights trained for
    another number of classes) it is skipped with a warning and keeps its random
    initialisation, so a backbone can be reused for a new label set.

    Parameters
    ----------
    model : torch.nn.Module
    path : str or path-like
        See :func:`read_state_dict`.

    Raises
    ------
    ValueError
        If a key is missing or unexpected, or a non-classifier shape differs, naming them;
        or for the reasons of :func:`read_state_dict`.
    """
    path = Path(path)
    state = read_state_dict(path)
    own = model.state_dict()
    linear_names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    head = linear_names[-1] if linear_names else None
    head_keys = {f"{head}.weight", f"{head}.bias"} if head is not None else set()
    skipped = sorted(k for k in head_keys
                     if k in state and k in own and state[k].shape != own[k].shape)
    if skipped:
        shapes = ", ".join(f"{k} {tuple(state[k].shape)} in the file vs {tuple(own[k].shape)} "
                           f"in the model" for k in skipped)
        warnings.warn(
            f"{path}: the classifier does not fit this number of classes ({shapes}); loaded "
            f"every other weight and kept the classifier's random init", UserWarning, stacklevel=2)
        state = {k: v for k, v in state.items() if k not in head_keys}
    missing = sorted(set(own) - set(state) - (head_keys if skipped else set()))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sorted(set(state) & set(own)) if state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {missing[:5]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:5]}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {'; '.join(mismatched[:5])}")
    if problems:
        raise ValueError(f"weights in {path} do not fit the {type(model).__name__}: "
                         + "; ".join(problems))
    model.load_state_dict(state, strict=not skipped)
