"""The GoogLeNet family: Table 1 as data (spec), blocks (layers), one builder (googlenet),
names (registry), weights files (weights) and the smallest input each can take (input_size)."""
from .googlenet import FeatureExtractor, GoogLeNet, GoogLeNetOutputs, Variant, googlenet_loss
from .input_size import check_input_size
from .registry import create_model, default_options, list_models, model_variant, register_model
from .weights import import_torchvision, load_weights, read_metadata, save_weights

__all__ = [
    "FeatureExtractor", "GoogLeNet", "GoogLeNetOutputs", "Variant", "googlenet_loss",
    "check_input_size", "create_model", "default_options", "list_models", "model_variant", "register_model",
    "import_torchvision", "load_weights", "read_metadata", "save_weights",
]
