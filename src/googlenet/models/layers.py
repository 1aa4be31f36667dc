"""The building blocks of GoogLeNet: ConvNormAct, Inception, InceptionAux and LRN.

Attribute names (`conv`, `bn`, `branch1`..`branch4`, `fc1`, `fc2`) follow
torchvision's googlenet so that its state_dicts load into `googlenet_tv` unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .spec import (
    AUX_CONV_CHANNELS,
    AUX_FC_FEATURES,
    AUX_POOL_OUTPUT,
    LRN_ALPHA,
    LRN_BETA,
    LRN_SIZE,
    InceptionSpec,
)


class ConvNormAct(nn.Module):
    """Conv -> (BatchNorm) -> ReLU. Without batch norm the conv carries a bias."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        norm: bool = True,
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = kernel_size // 2  # "same" size for odd kernels at stride 1
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=not norm
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x, inplace=True)


def LRN() -> nn.LocalResponseNorm:
    """Local response normalisation across 5 channels (alpha 1e-4, beta 0.75, k 1)."""
    return nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA, beta=LRN_BETA, k=1.0)


class Inception(nn.Module):
    """Four branches on one input, concatenated on channels (one row of Table 1).

    `branch3` picks the "5x5" branch's body:
      "5x5"        the paper: one true 5x5 conv
      "3x3"        torchvision's quirk: a single 3x3 conv in its place
      "double3x3"  two stacked 3x3 convs (same receptive field, fewer multiply-adds)
    """

    def __init__(
        self,
        in_channels: int,
        spec: InceptionSpec,
        norm: bool = True,
        branch3: str = "5x5",
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()

        def conv(cin: int, cout: int, k: int) -> ConvNormAct:
            return ConvNormAct(cin, cout, k, norm=norm, bn_eps=bn_eps)

        self.spec = spec
        self.out_channels = spec.out_channels
        self.branch1 = conv(in_channels, spec.n1x1, 1)
        self.branch2 = nn.Sequential(
            conv(in_channels, spec.n3x3red, 1),
            conv(spec.n3x3red, spec.n3x3, 3),
        )
        if branch3 == "5x5":
            body = [conv(spec.n5x5red, spec.n5x5, 5)]
        elif branch3 == "3x3":
            body = [conv(spec.n5x5red, spec.n5x5, 3)]
        elif branch3 == "double3x3":
            body = [conv(spec.n5x5red, spec.n5x5, 3), conv(spec.n5x5, spec.n5x5, 3)]
        else:
            raise ValueError(f"branch3 must be '5x5', '3x3' or 'double3x3', not {branch3!r}")
        self.branch3 = nn.Sequential(conv(in_channels, spec.n5x5red, 1), *body)
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            conv(in_channels, spec.pool_proj, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(branches, 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: avg pool -> 1x1 conv 128 -> FC 1024 -> dropout -> linear.

    `pool="paper"` is the paper's 5x5/3 average pool (14x14 -> 4x4); other input sizes
    are then brought to 4x4 by an adaptive pool, which is the identity at 224.
    `pool="adaptive"` is torchvision's adaptive 4x4 average pool.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dropout: float = 0.7,
        norm: bool = True,
        pool: str = "paper",
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        if pool not in ("paper", "adaptive"):
            raise ValueError(f"pool must be 'paper' or 'adaptive', not {pool!r}")
        self.paper_pool = pool == "paper"
        self.pool_output = AUX_POOL_OUTPUT  # an attribute, as TorchScript cannot read module globals
        self.conv = ConvNormAct(in_channels, AUX_CONV_CHANNELS, 1, norm=norm, bn_eps=bn_eps)
        self.fc1 = nn.Linear(AUX_CONV_CHANNELS * AUX_POOL_OUTPUT**2, AUX_FC_FEATURES)
        self.fc2 = nn.Linear(AUX_FC_FEATURES, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.paper_pool and min(x.shape[-2:]) >= 5:
            x = F.avg_pool2d(x, kernel_size=5, stride=3)
        x = F.adaptive_avg_pool2d(x, self.pool_output)
        x = self.conv(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x), inplace=True)
        x = self.dropout(x)
        return self.fc2(x)
