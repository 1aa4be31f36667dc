"""Pick the device: --device auto|cpu|cuda[:N]."""
from __future__ import annotations

import torch

from .errors import UserError

SUPPORTED = ("cpu", "cuda")  # what the project is built and tested for


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else cpu. Asking for cuda without one, a CUDA index past
    the last GPU, or a device type the project does not run on (mps, xpu, ...) is a UserError."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name).strip().lower())
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda (cuda:N for GPU N)") from None
    if device.type not in SUPPORTED:
        raise UserError(f"--device {name} is not supported: googlenet runs on cpu or cuda (use auto to pick)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} was asked for but no CUDA GPU is available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                            f"numbered from 0")
    if device.type == "cpu":
        if device.index not in (None, 0):
            raise UserError(f"--device {name}: there is one cpu device; use --device cpu")
        return torch.device("cpu")
    return device
