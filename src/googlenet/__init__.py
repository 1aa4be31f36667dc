"""GoogLeNet (Inception v1, Szegedy et al. 2014): the paper's network, faithful and fast.

    >>> import googlenet
    >>> model = googlenet.create_model("googlenet_cifar", in_chans=1)
    >>> googlenet.list_models()
    ['googlenet', 'googlenet_bn', 'googlenet_cifar', 'googlenet_cifar_fast', 'googlenet_tv']

The names below are imported on first use, not with the package: `googlenet --help` (whose
module lives in this package) then answers without importing torch (about 2 s), and a Ctrl-C
during that import reaches the command line's handler instead of printing a traceback.
"""
from __future__ import annotations

import importlib

from .errors import RunError, UserError

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {name: ".models" for name in (
    "GoogLeNet", "GoogLeNetOutputs", "create_model", "googlenet_loss", "import_torchvision", "list_models",
    "load_weights", "read_metadata", "save_weights")}

__all__ = ["RunError", "UserError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    elif not name.startswith("__"):  # a submodule used as an attribute: googlenet.models, googlenet.fast
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
