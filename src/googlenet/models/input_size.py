"""Whether a network can run at an input size, found without running it: the 224-px
GoogLeNet's pools shrink a 28-px image below 1x1 and would fail with a pooling layer's
traceback; `train` and `summary` say instead what size it needs."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import UserError

# The variants built for 28-32 px images (stems without the 224-px network's early downsampling).
SMALL_IMAGE_MODELS = ("googlenet_cifar", "googlenet_cifar_fast")


def check_input_size(model: nn.Module, input_size: int, in_chans: int, name: str) -> None:
    """One line, before training starts, instead of a pooling layer's traceback at the first
    step when the images are too small for the network (e.g. the 224-px googlenet on 28-px
    Fashion-MNIST). Shapes are checked on the meta device: no arithmetic, no memory."""
    class Unknown(Exception):
        """The probe failed for another reason than size: leave the verdict to the real run."""

    try:
        probe = copy.deepcopy(model).to("meta").train()  # training mode: the auxiliary heads too
    except Exception:  # noqa: BLE001 - a layer that cannot live on the meta device
        return

    def runs_at(size: int) -> bool:
        try:
            with torch.no_grad():
                probe(torch.empty(2, in_chans, size, size, device="meta"))
            return True
        except RuntimeError as e:
            if "too small" in str(e) or "greater than actual input size" in str(e):  # a pool/conv output < 1x1
                return False
            raise Unknown from e
        except Exception as e:  # noqa: BLE001
            raise Unknown from e

    try:
        if runs_at(input_size):
            return
        low, high = input_size, 1024  # too small, big enough (pool sizes only grow with the input)
        if not runs_at(high):
            return
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if runs_at(middle) else (middle, high)
    except Unknown:
        return
    small_models = [m for m in SMALL_IMAGE_MODELS if m != name]
    other = f", or a model for small images ({', '.join(small_models)})" if name not in SMALL_IMAGE_MODELS else ""
    raise UserError(f"{name} cannot run at {input_size}px: its pools need images of at least {high}px; "
                    f"use --input-size {high} or more{other}")
