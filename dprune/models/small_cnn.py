"""A small convolutional classifier that trains in seconds on a CPU (digits, Fashion-MNIST)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Conv-BN-ReLU stages separated by 2x2 max-pooling, global average pooling, a linear head.

    Parameters
    ----------
    in_channels : int
        Channels of the input images.
    num_classes : int
        Outputs of the classifier.
    widths : sequence of int
        Channels of each stage; every stage after the first halves the resolution
        (rounding up, so 8x8 digits become 4x4 then 2x2).

    Shapes
    ------
    input ``[B, in_channels, H, W]`` (any H, W >= 1) -> logits ``[B, num_classes]``.
    """

    def __init__(self, in_channels: int, num_classes: int,
                 widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"widths must be positive channel counts, got {tuple(widths)}")
        layers: list[nn.Module] = []
        channels = in_channels
        for stage, width in enumerate(widths):
            if stage:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            # No conv bias: the BatchNorm that follows has its own.
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x_BCHW)).flatten(1))
