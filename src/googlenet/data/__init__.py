"""Data: small datasets as uint8 tensors (datasets), augmentations (transforms) and the
device-resident batch loader (gpu_loader)."""
from .datasets import DATASETS, ArrayDataset, image_folder, load_dataset

__all__ = ["DATASETS", "ArrayDataset", "image_folder", "load_dataset"]
