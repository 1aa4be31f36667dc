"""The GoogLeNet family: Table 1 as data (spec), blocks (layers), one builder (googlenet),
names (registry) and weights files (weights)."""
from .googlenet import FeatureExtractor, GoogLeNet, GoogLeNetOutputs, Variant, googlenet_loss
from .registry import create_model, default_options, list_models, model_variant, register_model
from .weights import import_torchvision, load_weights, read_metadata, save_weights

__all__ = [
    "FeatureExtractor", "GoogLeNet", "GoogLeNetOutputs", "Variant", "googlenet_loss",
    "create_model", "default_options", "list_models", "model_variant", "register_model",
    "import_torchvision", "load_weights", "read_metadata", "save_weights",
]
