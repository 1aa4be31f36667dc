"""Inference-only GoogLeNet: batch norm folded into the convs, the three input 1x1 convs
of each Inception module merged into one, conv and ReLU run as one call.

`FoldedGoogLeNet.from_model(model)` reads a GoogLeNet (any variant) in eval semantics and
holds plain weight/bias tensors: no BatchNorm, no autograd, logits out. Folding is
exact algebra (w' = w * gamma / sqrt(var + eps), b' = beta + (b - mean) * gamma /
sqrt(var + eps)); the results differ from the plain model only by float rounding.

On CPU the convs can be run by oneDNN with prepacked weights and the ReLU fused into
the conv (`pack_for_mkldnn`), which is what makes batch-1 latency fast on x86.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..models.googlenet import GoogLeNet
from ..models.layers import ConvNormAct, Inception


def folded_weights(block: ConvNormAct) -> tuple[Tensor, Tensor]:
    """Conv weight and bias with the block's batch norm (running statistics) folded in."""
    conv = block.conv
    weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else None
    bn = block.bn
    if bn is None:
        return weight.clone(), bias.clone() if bias is not None else weight.new_zeros(weight.shape[0])
    w, b = fuse_conv_bn_weights(
        weight, bias, bn.running_mean, bn.running_var, bn.eps, bn.weight.detach(), bn.bias.detach()
    )
    return w.detach(), b.detach()


class ConvReLU(nn.Module):
    """relu(conv2d(x, weight, bias)), optionally through oneDNN with a prepacked weight."""

    def __init__(self, weight: Tensor, bias: Tensor, stride: int, padding: int) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.stride = [stride, stride]
        self.padding = [padding, padding]
        self.packed: Tensor | None = None  # oneDNN weight layout, set by pack_for_mkldnn

    @classmethod
    def from_block(cls, block: ConvNormAct) -> "ConvReLU":
        weight, bias = folded_weights(block)
        return cls(weight, bias, block.conv.stride[0], block.conv.padding[0])

    @classmethod
    def merged(cls, blocks: list[ConvNormAct]) -> "ConvReLU":
        """One conv computing the outputs of several same-shape convs on the same input."""
        pairs = [folded_weights(b) for b in blocks]
        conv = blocks[0].conv
        weight = torch.cat([w for w, _ in pairs], 0)
        bias = torch.cat([b for _, b in pairs], 0)
        return cls(weight, bias, conv.stride[0], conv.padding[0])

    def pack(self, input_shape: list[int]) -> None:
        """Reorder the weight once into oneDNN's blocked layout for this input shape."""
        self.packed = torch.ops.mkldnn._reorder_convolution_weight(
            self.weight, self.padding, self.stride, [1, 1], 1, input_shape
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.packed is not None and x.device.type == "cpu" and x.dtype == torch.float32:
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.packed, self.bias, self.padding, self.stride, [1, 1], 1, "relu", [], ""
            )
        return F.relu(F.conv2d(x, self.weight, self.bias, self.stride, self.padding), inplace=True)


class FoldedInception(nn.Module):
    """Inception for inference: one merged 1x1 conv for branches 1-3, split, then the rest."""

    def __init__(self, block: Inception) -> None:
        super().__init__()
        self.reduce = ConvReLU.merged([block.branch1, block.branch2[0], block.branch3[0]])
        self.split_sizes = [
            block.branch1.conv.out_channels,
            block.branch2[0].conv.out_channels,
            block.branch3[0].conv.out_channels,
        ]
        self.branch2 = nn.Sequential(*[ConvReLU.from_block(b) for b in block.branch2[1:]])
        self.branch3 = nn.Sequential(*[ConvReLU.from_block(b) for b in block.branch3[1:]])
        self.pool = block.branch4[0]
        self.proj = ConvReLU.from_block(block.branch4[1])

    def forward(self, x: Tensor) -> Tensor:
        out1, red2, red3 = self.reduce(x).split(self.split_sizes, dim=1)
        return torch.cat([out1, self.branch2(red2), self.branch3(red3), self.proj(self.pool(x))], 1)


class FoldedGoogLeNet(nn.Module):
    """Eval-only GoogLeNet with folded weights; forward(x) -> logits (dropout is a no-op)."""

    # The trunk in execution order; Inception entries become FoldedInception.
    TRUNK = (
        "conv1", "maxpool1", "lrn1", "conv2", "conv3", "lrn2", "maxpool2",
        "inception3a", "inception3b", "maxpool3",
        "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
        "inception5a", "inception5b",
    )

    def __init__(self, model: GoogLeNet) -> None:
        super().__init__()
        self.source_transform = model._transform_input if model.transform_input else None
        layers: list[nn.Module] = []
        for name in self.TRUNK:
            module = getattr(model, name)
            if isinstance(module, ConvNormAct):
                layers.append(ConvReLU.from_block(module))
            elif isinstance(module, Inception):
                layers.append(FoldedInception(module))
            elif not isinstance(module, nn.Identity):
                layers.append(module)  # pools and LRN have no weights
        self.trunk = nn.Sequential(*layers)
        fc = model.fc  # nn.Identity for num_classes=0: the pooled features are the output
        self.register_buffer("fc_weight", fc.weight.detach().clone() if isinstance(fc, nn.Linear) else None)
        self.register_buffer("fc_bias", fc.bias.detach().clone() if isinstance(fc, nn.Linear) else None)

    def forward(self, x: Tensor) -> Tensor:
        if self.source_transform is not None:
            x = self.source_transform(x)
        x = self.trunk(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return x if self.fc_weight is None else F.linear(x, self.fc_weight, self.fc_bias)

    def conv_layers(self) -> list[ConvReLU]:
        return [m for m in self.modules() if isinstance(m, ConvReLU)]

    def pack_for_mkldnn(self, example: Tensor) -> None:
        """Prepack every conv weight for oneDNN, using the shapes `example` produces."""
        shapes: dict[ConvReLU, list[int]] = {}

        def record_shape(module: nn.Module, args: tuple) -> None:
            shapes[module] = list(args[0].shape)

        hooks = [conv.register_forward_pre_hook(record_shape) for conv in self.conv_layers()]
        try:
            with torch.no_grad():
                self(example)
        finally:
            for h in hooks:
                h.remove()
        for conv, shape in shapes.items():
            conv.pack(shape)
