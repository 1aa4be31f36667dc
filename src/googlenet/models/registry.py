"""Model registry: `create_model(name, **options)` and `list_models()`, timm-style.

Every registered builder returns a GoogLeNet that remembers its name and options
(`model.model_name`, `model.model_options`), so a weights file can rebuild it.
"""
from __future__ import annotations

import difflib

from torch import nn

from ..errors import UserError
from .googlenet import FeatureExtractor, GoogLeNet, Variant

_VARIANTS: dict[str, Variant] = {}
_DEFAULTS: dict[str, dict] = {}


def register_model(name: str, variant: Variant, **defaults) -> None:
    """Register `name` as GoogLeNet(variant, **defaults, **user options)."""
    _VARIANTS[name] = variant
    _DEFAULTS[name] = defaults


def list_models() -> list[str]:
    return sorted(_VARIANTS)


def model_variant(name: str) -> Variant:
    _check_name(name)
    return _VARIANTS[name]


def default_options(name: str) -> dict:
    _check_name(name)
    return dict(_DEFAULTS[name])


def _check_name(name: str) -> None:
    if name not in _VARIANTS:
        close = difflib.get_close_matches(name, list(_VARIANTS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown model {name!r}{hint}; choose from {', '.join(list_models())}")


def create_model(
    name: str,
    weights: str | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] = (0, 1, 2, 3, 4),
    **options,
) -> nn.Module:
    """Build a registered model.

    options: num_classes, in_chans, aux_logits, dropout, dropout_aux (and
    transform_input for googlenet_tv). weights: a .safetensors file of this project,
    or "imagenet" for torchvision's published weights (googlenet_tv only).
    """
    _check_name(name)
    resolved = {**_DEFAULTS[name], **options}
    if weights == "imagenet":
        from .weights import imagenet_model

        model = imagenet_model(name, **options)
    else:
        model = GoogLeNet(_VARIANTS[name], **resolved)
        model.model_name = name
        model.model_options = resolved
        if weights is not None:
            from .weights import load_state_into

            load_state_into(model, weights)
    if features_only:
        return FeatureExtractor(model, out_indices)
    return model


# The family. Defaults listed here are what differs from GoogLeNet()'s own.
register_model("googlenet", Variant(norm=False, lrn=True, branch3="5x5", pool4_kernel=3, aux_pool="paper"))
register_model("googlenet_bn", Variant(norm=True, lrn=False, branch3="5x5", pool4_kernel=3, aux_pool="paper"))
register_model(
    "googlenet_tv",
    Variant(norm=True, lrn=False, branch3="3x3", pool4_kernel=2, aux_pool="adaptive", init="trunc_normal"),
    dropout=0.2,  # torchvision's default
)
register_model(
    "googlenet_cifar",
    Variant(stem="cifar", norm=True, branch3="double3x3", pool4_kernel=3, aux_pool="adaptive", input_size=32),
    num_classes=10,
)
# googlenet_cifar with the pool before stage 3: the same weights' shapes, a third of the
# multiply-adds at 28 px (0.40 G vs 1.28 G), for when time, not the last point, matters.
register_model(
    "googlenet_cifar_fast",
    Variant(stem="cifar", stem_pool=True, norm=True, branch3="double3x3", pool4_kernel=3, aux_pool="adaptive",
            input_size=32),
    num_classes=10,
)
