"""GoogLeNet built from the Table 1 rows in `spec.py`; the variants are options of one builder.

Module attribute names match torchvision's googlenet (conv1, maxpool1, conv2, conv3,
maxpool2, inception3a, ..., aux1, aux2, fc), so `googlenet_tv` loads its state_dicts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import spec
from .layers import LRN, ConvNormAct, Inception, InceptionAux


@dataclass(frozen=True)
class Variant:
    """What distinguishes one member of the family from another (not user options)."""

    stem: str = "paper"  # "paper": 7x7/2 conv + pools; "cifar": 3x3 convs, no early downsampling
    stem_pool: bool = False  # "cifar" stem only: end it with the 3x3/2 max pool (stages 3-5 at half size)
    norm: bool = True  # batch norm after every conv (no conv bias)
    lrn: bool = False  # local response norm in the stem (the paper)
    branch3: str = "5x5"  # body of the "5x5" branch: "5x5" | "3x3" | "double3x3"
    pool4_kernel: int = 3  # max pool before stage 5: 3x3/2 (paper) or 2x2/2 (torchvision)
    aux_pool: str = "paper"  # "paper" 5x5/3 avg pool | "adaptive" 4x4 (torchvision)
    bn_eps: float = 1e-3
    init: str = "kaiming"  # "kaiming" | "trunc_normal" (torchvision's 0.01 std)
    input_size: int = 224  # native input size (pixels, square)


class GoogLeNetOutputs(NamedTuple):
    """Train-mode output with auxiliary heads: aux1 after 4a, aux2 after 4d."""

    logits: Tensor
    aux1: Tensor
    aux2: Tensor


def _max_pool(kernel: int = 3) -> nn.MaxPool2d:
    # ceil_mode as in the paper's Caffe model: 112 -> 56 -> 28 -> 14 -> 7 at 224.
    return nn.MaxPool2d(kernel, stride=2, ceil_mode=True)


class GoogLeNet(nn.Module):
    """Inception v1. Train mode with aux heads returns GoogLeNetOutputs, else logits."""

    def __init__(
        self,
        variant: Variant = Variant(),
        num_classes: int = 1000,
        in_chans: int = 3,
        aux_logits: bool = True,
        dropout: float = spec.DROPOUT,
        dropout_aux: float = spec.DROPOUT_AUX,
        transform_input: bool = False,
    ) -> None:
        super().__init__()
        if transform_input and in_chans != 3:
            raise ValueError("transform_input needs in_chans=3 (it re-normalises RGB)")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no classifier), not {num_classes}")
        self.variant = variant
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        v = variant

        def conv(cin: int, cout: int, k: int, stride: int = 1) -> ConvNormAct:
            return ConvNormAct(cin, cout, k, stride=stride, norm=v.norm, bn_eps=v.bn_eps)

        # Stages 1-2, the stem.
        c1, c2, c3 = spec.STEM_CHANNELS
        if v.stem == "paper":
            self.conv1 = conv(in_chans, c1, 7, stride=2)
            self.maxpool1: nn.Module = _max_pool()
            self.lrn1: nn.Module = LRN() if v.lrn else nn.Identity()
            self.conv2 = conv(c1, c2, 1)
            self.conv3 = conv(c2, c3, 3)
            self.lrn2: nn.Module = LRN() if v.lrn else nn.Identity()
            self.maxpool2: nn.Module = _max_pool()
        elif v.stem == "cifar":
            # Small images keep their resolution until stage 3 (28-32 px in, 7-8 px at stage 5);
            # with stem_pool the paper's pool before stage 3 comes back, quartering the
            # work of stages 3-5 (28 px in: 14, 7 and 3 px there).
            self.conv1 = conv(in_chans, c1, 3)
            self.maxpool1 = nn.Identity()
            self.lrn1 = nn.Identity()
            self.conv2 = conv(c1, c2, 3)
            self.conv3 = conv(c2, c3, 3)
            self.lrn2 = nn.Identity()
            self.maxpool2 = _max_pool() if v.stem_pool else nn.Identity()
        else:
            raise ValueError(f"unknown stem {v.stem!r}")
        if v.stem_pool and v.stem != "cifar":
            raise ValueError("stem_pool applies to the cifar stem (the paper stem always pools)")

        # Stages 3-5, Inception modules from Table 1.
        def inception(name: str, cin: int) -> Inception:
            return Inception(cin, spec.INCEPTION_BY_NAME[name], v.norm, v.branch3, v.bn_eps)

        m = spec.INCEPTION_BY_NAME
        self.inception3a = inception("3a", c3)
        self.inception3b = inception("3b", m["3a"].out_channels)
        self.maxpool3 = _max_pool()
        self.inception4a = inception("4a", m["3b"].out_channels)
        self.inception4b = inception("4b", m["4a"].out_channels)
        self.inception4c = inception("4c", m["4b"].out_channels)
        self.inception4d = inception("4d", m["4c"].out_channels)
        self.inception4e = inception("4e", m["4d"].out_channels)
        self.maxpool4 = _max_pool(v.pool4_kernel)
        self.inception5a = inception("5a", m["4e"].out_channels)
        self.inception5b = inception("5b", m["5a"].out_channels)

        self.aux1: InceptionAux | None = None
        self.aux2: InceptionAux | None = None
        self.dropout_aux = dropout_aux
        self._make_aux_heads(num_classes)

        # Head: global average pool, dropout, linear.
        self.num_features = spec.FEATURES
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = self._classifier(num_classes)

        self._init_weights()

    # With num_classes 0, as in timm, there is no classifier: the model returns its pooled
    # 1024 features, and has no aux heads.
    def _classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(spec.FEATURES, num_classes) if num_classes > 0 else nn.Identity()

    def _make_aux_heads(self, num_classes: int) -> None:
        self.aux1 = self.aux2 = None
        if self.aux_logits and num_classes > 0:
            m, v = spec.INCEPTION_BY_NAME, self.variant
            self.aux1 = InceptionAux(m["4a"].out_channels, num_classes, self.dropout_aux, v.norm, v.aux_pool, v.bn_eps)
            self.aux2 = InceptionAux(m["4d"].out_channels, num_classes, self.dropout_aux, v.norm, v.aux_pool, v.bn_eps)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if self.variant.init == "trunc_normal":
                    nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                elif isinstance(m, nn.Conv2d):
                    # He init keeps activations at scale through 22 ReLU layers, which
                    # lets the no-BN paper network train from scratch.
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                else:
                    nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ---------------------------------------------------------------- forward
    def _transform_input(self, x: Tensor) -> Tensor:
        # torchvision's quirk: inputs normalised with ImageNet mean/std are mapped to the
        # (x - 0.5) / 0.5 normalisation its ported weights were trained with.
        if self.transform_input:
            x0 = x[:, 0:1] * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
            x1 = x[:, 1:2] * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
            x2 = x[:, 2:3] * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
            x = torch.cat((x0, x1, x2), 1)
        return x

    def forward_stem(self, x: Tensor) -> Tensor:
        x = self._transform_input(x)
        # N x 3 x 224 x 224
        x = self.conv1(x)
        # N x 64 x 112 x 112
        x = self.maxpool1(x)
        x = self.lrn1(x)
        # N x 64 x 56 x 56
        x = self.conv2(x)
        # N x 64 x 56 x 56
        x = self.conv3(x)
        x = self.lrn2(x)
        # N x 192 x 56 x 56
        x = self.maxpool2(x)
        # N x 192 x 28 x 28
        return x

    def _forward_trunk(self, x: Tensor, with_aux: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        aux1: Tensor | None = None
        aux2: Tensor | None = None
        x = self.forward_stem(x)
        x = self.inception3a(x)
        # N x 256 x 28 x 28
        x = self.inception3b(x)
        # N x 480 x 28 x 28
        x = self.maxpool3(x)
        # N x 480 x 14 x 14
        x = self.inception4a(x)
        # N x 512 x 14 x 14
        if with_aux and self.aux1 is not None:
            aux1 = self.aux1(x)
        x = self.inception4b(x)
        # N x 512 x 14 x 14
        x = self.inception4c(x)
        # N x 512 x 14 x 14
        x = self.inception4d(x)
        # N x 528 x 14 x 14
        if with_aux and self.aux2 is not None:
            aux2 = self.aux2(x)
        x = self.inception4e(x)
        # N x 832 x 14 x 14
        x = self.maxpool4(x)
        # N x 832 x 7 x 7
        x = self.inception5a(x)
        # N x 832 x 7 x 7
        x = self.inception5b(x)
        # N x 1024 x 7 x 7
        return x, aux1, aux2

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map, N x 1024 x H/32 x W/32 (before pooling)."""
        return self._forward_trunk(x, with_aux=False)[0]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.avgpool(x)
        # N x 1024 x 1 x 1
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        if pre_logits:
            return x
        return self.fc(x)
        # N x num_classes

    def forward(self, x: Tensor):  # -> Tensor | GoogLeNetOutputs
        with_aux = self.training and self.aux_logits
        x, aux1, aux2 = self._forward_trunk(x, with_aux)
        logits = self.forward_head(x)
        if torch.jit.is_scripting():
            # TorchScript needs one return type: a scripted model is an inference model.
            return logits
        if with_aux and aux1 is not None and aux2 is not None:
            return GoogLeNetOutputs(logits, aux1, aux2)
        return logits

    # ---------------------------------------------------------------- utilities
    def reset_classifier(self, num_classes: int) -> None:
        """New, freshly initialised classifier (and aux heads) for `num_classes` (0: none, the
        model returns its pooled features)."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, not {num_classes}")
        self.num_classes = num_classes
        self._record_option("num_classes", num_classes)
        device = self.conv1.conv.weight.device
        self._make_aux_heads(num_classes)
        self.fc = self._classifier(num_classes)
        if isinstance(self.fc, nn.Linear):
            nn.init.normal_(self.fc.weight, std=0.01)
            nn.init.zeros_(self.fc.bias)
        self.to(device)

    def reorder_classes(self, order: Sequence[int]) -> None:
        """Make class i of the classifier (and aux heads) what class order[i] was: the same
        network with its outputs listed in another order (fine-tuning on an image folder,
        whose classes come in alphabetical order, from weights trained in another)."""
        index = torch.as_tensor(list(order))
        heads = [self.fc] + [aux.fc2 for aux in (self.aux1, self.aux2) if aux is not None]
        with torch.no_grad():
            for layer in heads:
                layer.weight.copy_(layer.weight[index])
                layer.bias.copy_(layer.bias[index])

    def drop_aux(self) -> None:
        """Remove the auxiliary heads (they are only used for training)."""
        self.aux_logits = False
        self.aux1 = None
        self.aux2 = None
        self._record_option("aux_logits", False)

    def _record_option(self, key: str, value: object) -> None:
        # create_model records the options a weights file needs to rebuild the model
        # (`model_options`); a change of head must show there, or the saved file would
        # rebuild the old head and fail to load its own weights.
        options = getattr(self, "model_options", None)
        if isinstance(options, dict):
            options[key] = value

    def inception_modules(self) -> dict[str, Inception]:
        return {s.name: getattr(self, f"inception{s.name}") for s in spec.INCEPTION}


class FeatureExtractor(nn.Module):
    """`features_only=True`: the feature map after each stage, as a list.

    feature_info lists, per stage, the channels ("num_chs"), the total stride
    ("reduction") and the module whose output is returned ("module").
    """

    STAGE_ENDS = ("conv1", "conv3", "inception3b", "inception4e", "inception5b")

    def __init__(self, model: GoogLeNet, out_indices: tuple[int, ...] = (0, 1, 2, 3, 4)) -> None:
        super().__init__()
        model.drop_aux()
        self.model = model
        self.out_indices = tuple(out_indices)
        paper_stem = model.variant.stem == "paper"
        m = spec.INCEPTION_BY_NAME
        channels = (spec.STEM_CHANNELS[0], spec.STEM_CHANNELS[2], m["3b"].out_channels,
                    m["4e"].out_channels, m["5b"].out_channels)
        if paper_stem:
            reductions: tuple[int, ...] = (2, 4, 8, 16, 32)
        else:
            reductions = (1, 1, 2, 4, 8) if model.variant.stem_pool else (1, 1, 1, 2, 4)
        self.feature_info = [
            {"num_chs": channels[i], "reduction": reductions[i], "module": self.STAGE_ENDS[i]}
            for i in self.out_indices
        ]

    def forward(self, x: Tensor) -> list[Tensor]:
        m = self.model
        x = m._transform_input(x)
        stages: list[Tensor] = []
        x = m.conv1(x)
        stages.append(x)
        x = m.conv3(m.conv2(m.lrn1(m.maxpool1(x))))
        stages.append(x)
        x = m.inception3b(m.inception3a(m.maxpool2(m.lrn2(x))))
        stages.append(x)
        x = m.maxpool3(x)
        for block in (m.inception4a, m.inception4b, m.inception4c, m.inception4d, m.inception4e):
            x = block(x)
        stages.append(x)
        x = m.inception5b(m.inception5a(m.maxpool4(x)))
        stages.append(x)
        return [stages[i] for i in self.out_indices]


def googlenet_loss(outputs, target: Tensor, criterion=F.cross_entropy,
                   aux_weight: float = spec.AUX_LOSS_WEIGHT) -> Tensor:
    """The paper's training loss: main + 0.3 x (aux1 + aux2); plain loss for logits.
    `outputs` may be any (logits, aux, aux) tuple: ours, or torchvision's GoogLeNetOutputs
    (which lists the aux heads in the other order; their sum is the same)."""
    if isinstance(outputs, tuple):
        logits, aux_a, aux_b = outputs
        return criterion(logits, target) + aux_weight * (criterion(aux_a, target) + criterion(aux_b, target))
    return criterion(outputs, target)
