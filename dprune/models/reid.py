"""The "bag of tricks" ReID model (Luo et al., CVPR-W 2019): ResNet, last stride 1, BNNeck.

Legend: B batch, D feature width, C identities.

    image -> ResNet (last stage stride 1) -> global average pool -> f [B, D]   (triplet loss)
          -> BatchNorm1d (bias frozen at 0)  -> f_bn [B, D]                     (retrieval)
          -> Linear without bias             -> logits [B, C]                   (ID loss, trajectory)
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torchvision.models as tvm

from .build import load_weights

BACKBONES = {"resnet18": (tvm.resnet18, 512), "resnet50": (tvm.resnet50, 2048)}


class ReIDOutput(NamedTuple):
    logits: torch.Tensor  # [B, C]
    feat: torch.Tensor  # [B, D] before the BNNeck
    feat_bn: torch.Tensor  # [B, D] after it


class BoTReID(nn.Module):
    """ResNet backbone + BNNeck + bias-free identity classifier.

    ``forward`` returns :class:`ReIDOutput` in training mode and the retrieval feature
    ``f_bn [B, D]`` in eval mode (what :func:`dprune.evaluate.reid.extract_features` wants);
    :meth:`logits` gives the identity logits in either mode.
    """

    def __init__(self, num_classes: int, backbone: str = "resnet50", *, last_stride: int = 1, weights=None):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown ReID backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
        if num_classes < 2:
            raise ValueError(f"a ReID classifier needs at least 2 identities, got {num_classes}")
        make, dim = BACKBONES[backbone]
        net = make(weights=None)
        if weights is not None:
            load_weights(net, weights)  # ImageNet weights from a local file; the fc is dropped below
        if last_stride == 1:
            # Keep a 16x8 final map for 256x128 inputs: the first block of layer4 stops striding.
            block = net.layer4[0]
            conv = block.conv2 if isinstance(block, tvm.resnet.Bottleneck) else block.conv1
            conv.stride = (1, 1)
            block.downsample[0].stride = (1, 1)
        self.backbone = nn.Sequential(*list(net.children())[:-2])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bnneck = nn.BatchNorm1d(dim)
        self.bnneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)
        self.feat_dim = dim

    def _features(self, x_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.pool(self.backbone(x_BCHW)).flatten(1)
        return f, self.bnneck(f)

    def forward(self, x_BCHW: torch.Tensor):
        f, f_bn = self._features(x_BCHW)
        if not self.training:
            return f_bn
        return ReIDOutput(self.classifier(f_bn), f, f_bn)

    def logits(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.classifier(self._features(x_BCHW)[1])
