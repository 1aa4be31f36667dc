"""An Inception module whose three input 1x1 convs run as one conv (training and eval).

Branch 1's 1x1 conv and the 1x1 "reduce" convs of branches 2 and 3 all read the
module input. `FusedInception` concatenates their weights (and their batch-norm
parameters and running statistics) at forward time, runs one conv + one batch norm +
one ReLU over the input, and splits the result. Per output channel this is the same
arithmetic, so outputs match the plain module; the input is read once instead of three
times and three launches become one.

The plain module's children are reused as they are, so parameters, state_dict keys,
optimizer state and checkpoints are unchanged; batch-norm running statistics are
written back to the original buffers after each training step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.layers import ConvNormAct, Inception


class FusedInception(nn.Module):
    """Drop-in replacement for `Inception` sharing its submodules (same state_dict keys)."""

    def __init__(self, block: Inception) -> None:
        super().__init__()
        self.spec = block.spec
        self.out_channels = block.out_channels
        # Same children, same names: state_dict keys stay "branch1.conv.weight", ...
        self.branch1 = block.branch1
        self.branch2 = block.branch2
        self.branch3 = block.branch3
        self.branch4 = block.branch4
        self.split_sizes = [
            block.branch1.conv.out_channels,
            block.branch2[0].conv.out_channels,
            block.branch3[0].conv.out_channels,
        ]

    def _input_convs(self) -> tuple[ConvNormAct, ConvNormAct, ConvNormAct]:
        return self.branch1, self.branch2[0], self.branch3[0]

    def _fused_reduce(self, x: Tensor) -> Tensor:
        convs = self._input_convs()
        weight = torch.cat([c.conv.weight for c in convs], 0)
        bias = None
        if convs[0].conv.bias is not None:
            bias = torch.cat([c.conv.bias for c in convs], 0)
        y = F.conv2d(x, weight, bias)
        bns = [c.bn for c in convs]
        if bns[0] is not None:
            y = self._fused_batch_norm(y, bns)
        return F.relu(y, inplace=True)

    def _fused_batch_norm(self, y: Tensor, bns: list[nn.BatchNorm2d]) -> Tensor:
        first = bns[0]
        use_batch_stats = first.training or first.running_mean is None
        momentum = first.momentum if first.momentum is not None else 0.0
        if first.training and first.momentum is None:
            # Cumulative moving average, as BatchNorm2d does when momentum is None.
            momentum = 1.0 / float(first.num_batches_tracked.item() + 1)
        running_mean = torch.cat([bn.running_mean for bn in bns])
        running_var = torch.cat([bn.running_var for bn in bns])
        y = F.batch_norm(
            y,
            running_mean,
            running_var,
            torch.cat([bn.weight for bn in bns]),
            torch.cat([bn.bias for bn in bns]),
            training=use_batch_stats,
            momentum=momentum,
            eps=first.eps,
        )
        if first.training:
            # F.batch_norm updated the concatenated copies; write them back.
            with torch.no_grad():
                means = running_mean.split(self.split_sizes)
                variances = running_var.split(self.split_sizes)
                for bn, mean, var in zip(bns, means, variances):
                    bn.running_mean.copy_(mean)
                    bn.running_var.copy_(var)
                    bn.num_batches_tracked.add_(1)
        return y

    def forward(self, x: Tensor) -> Tensor:
        reduced = self._fused_reduce(x)
        out1, out2, out3 = reduced.split(self.split_sizes, dim=1)
        # The rest of branches 2 and 3 after their (merged) first conv. A loop, not
        # `branch2[1:]`, which would build a new Sequential per call (and trip torch.compile).
        for i, layer in enumerate(self.branch2):
            if i > 0:
                out2 = layer(out2)
        for i, layer in enumerate(self.branch3):
            if i > 0:
                out3 = layer(out3)
        out4 = self.branch4(x)
        return torch.cat([out1, out2, out3, out4], 1)


def can_fuse(block: nn.Module) -> bool:
    """True for an Inception whose three input convs agree on bias/BN settings."""
    if not isinstance(block, Inception):
        return False
    convs = (block.branch1, block.branch2[0], block.branch3[0])
    has_bn = {c.bn is not None for c in convs}
    if len(has_bn) != 1:
        return False
    if has_bn.pop():
        bns = [c.bn for c in convs]
        same = {(bn.eps, bn.momentum, bn.track_running_stats, bn.affine) for bn in bns}
        return len(same) == 1 and bns[0].track_running_stats and bns[0].affine
    return True


def fuse_inception_modules(model: nn.Module) -> nn.Module:
    """Replace every fusable Inception child of `model` with a FusedInception, in place."""
    for name, child in list(model.named_children()):
        if can_fuse(child):
            setattr(model, name, FusedInception(child))
        else:
            fuse_inception_modules(child)
    return model
