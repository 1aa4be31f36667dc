"""GoogLeNet (Inception v1, Szegedy et al. 2014): the paper's network, faithful and fast.

    >>> import googlenet
    >>> model = googlenet.create_model("googlenet_cifar", in_chans=1)
    >>> googlenet.list_models()
    ['googlenet', 'googlenet_bn', 'googlenet_cifar', 'googlenet_cifar_fast', 'googlenet_tv']
"""
from .errors import RunError, UserError
from .models import (
    GoogLeNet,
    GoogLeNetOutputs,
    create_model,
    googlenet_loss,
    import_torchvision,
    list_models,
    load_weights,
    read_metadata,
    save_weights,
)

__version__ = "0.1.0"

__all__ = [
    "GoogLeNet", "GoogLeNetOutputs", "RunError", "UserError", "create_model", "googlenet_loss",
    "import_torchvision", "list_models", "load_weights", "read_metadata", "save_weights",
]
