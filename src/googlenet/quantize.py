"""Post-training static int8 quantization of an exported ONNX model, for onnxruntime on CPU.

onnxruntime's quantizer calibrates activation ranges (min/max) on a few hundred training
images preprocessed exactly as at inference, then writes a QDQ model: int8 weights
(one scale per output channel) and int8 activations, which onnxruntime's CPU kernels
fuse into integer convolutions.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .errors import UserError
from .fileio import atomic_write

CALIBRATION_BATCH = 16  # images per calibration run: bounds memory at 224 px
# onnxruntime keeps what each calibration run measured until the end (about 0.2 MB per image
# for googlenet_cifar at 28 px, measured), and runs at tens of images a second on a CPU: a
# count like the whole training set would take hours and gigabytes for ranges that a few
# hundred images already fix.
MAX_CALIBRATION_IMAGES = 5000
RANDOM_CALIBRATION = "random"
CALIBRATION_METHODS = {  # activation range from the calibration outputs
    "minmax": lambda m: m.MinMax,
    "percentile": lambda m: m.Percentile,
    "entropy": lambda m: m.Entropy,
}


def calibration_batches(meta: dict, dataset: str | None, count: int, data_dir: str | None = None,
                        seed: int = 0) -> list[np.ndarray]:
    """`count` training images of `dataset` (default: the one the weights name) as the
    normalised float arrays the network takes, in batches of CALIBRATION_BATCH.

    dataset "random": uniform noise in [0, 1] pixel space, normalised the same way (only
    useful to test the plumbing; real calibration needs real images)."""
    from .predict import normalize, preprocess

    if count <= 0:
        raise UserError(f"--calib-images must be a positive number of images, got {count}")
    if count > MAX_CALIBRATION_IMAGES:
        raise UserError(f"--calib-images {count} is more than calibration can use (at most "
                        f"{MAX_CALIBRATION_IMAGES}: time and memory grow with every image, and a few hundred "
                        "already fix the ranges; the default is 300)")
    name = dataset or meta.get("dataset") or ""
    if not name:
        raise UserError("the weights do not name the dataset they were trained on; pass "
                        f"--calib-dataset NAME (fashion-mnist, cifar10, cifar100, or {RANDOM_CALIBRATION} to test the "
                        "plumbing only) and --data DIR if needed")
    size, chans = int(meta["input_size"]), int(meta["in_chans"])
    if name == RANDOM_CALIBRATION:
        generator = torch.Generator().manual_seed(seed)
        pixels = torch.rand(count, chans, size, size, generator=generator)
        images = normalize(pixels, meta["mean"], meta["std"])
    elif name == "imagefolder":
        images = torch.stack([preprocess(i, meta) for i in _folder_images(data_dir, count, chans)])
    else:
        from .data.datasets import load_dataset

        data = load_dataset(name, "train", data_dir, limit=count)
        images = torch.cat([preprocess(chunk, meta) for chunk in data.images.split(CALIBRATION_BATCH)])
    # Equal batches: the histogram calibrators (percentile, entropy) stack them.
    step = max(d for d in range(1, CALIBRATION_BATCH + 1) if len(images) % d == 0)
    return [b.contiguous().numpy() for b in images.split(step)]


def _folder_images(root: str | None, count: int, channels: int) -> list[torch.Tensor]:
    """`count` images spread evenly over root/train (its files are sorted by class), decoded
    by the guarded reader predict uses; unreadable files are skipped, and a folder where not
    one picked file decodes is a one-line error naming the first reason."""
    from .data.datasets import image_folder, spread_over_classes
    from .images import read_readable

    if not root:
        raise UserError("int8 calibration on an ImageFolder needs --data DIR (the folder holding train/)")
    paths = [path for path, _ in spread_over_classes(image_folder(root, "train").samples, count)]
    return [image for _, image in read_readable(paths, channels, [], f"{root}/train")]


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over our batches (re-split when the
    model takes a fixed batch size)."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray], fixed_batch: int | None,
                 on_images: Callable[[int], object] | None = None) -> None:
        self.input_name = input_name
        self.batches = batches
        self.fixed_batch = fixed_batch
        self.on_images = on_images  # called with each run's image count (a progress bar)
        self._iter = self._feeds()

    def _feeds(self) -> Iterator[dict]:
        for batch in self.batches:
            step = self.fixed_batch or len(batch)
            for i in range(0, len(batch) - step + 1, step):
                yield {self.input_name: batch[i:i + step]}
                if self.on_images is not None:
                    self.on_images(step)

    def __iter__(self) -> Iterator[dict]:
        return self._feeds()

    def get_next(self) -> dict | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = self._feeds()


def quantize_onnx(fp32_path: str | os.PathLike, out: str | os.PathLike, batches: Sequence[np.ndarray],
                  per_channel: bool = True, method: str = "minmax", extra_options: dict | None = None,
                  progress: bool = False) -> Path:
    """Write an int8 QDQ copy of `fp32_path` calibrated on `batches`, keeping its metadata
    (with int8=true and the calibration size added). `progress`: progress on stderr while calibrating
    (a bar on a terminal, else a line a minute)."""
    from .progress import progress as progress_display
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .onnx_backend import decode_metadata
    from .export import set_metadata

    fp32 = onnx.load(str(fp32_path))
    meta = decode_metadata({p.key: p.value for p in fp32.metadata_props})
    graph_input = fp32.graph.input[0]
    first_dim = graph_input.type.tensor_type.shape.dim[0]
    fixed_batch = first_dim.dim_value if first_dim.HasField("dim_value") else None
    CalibrationDataReader.register(_Reader)  # the quantizer checks isinstance

    with tempfile.TemporaryDirectory(prefix="googlenet-int8-") as tmp, \
            progress_display(sum(len(b) for b in batches), "int8 calibration", enabled=progress) as bar:
        reader = _Reader(graph_input.name, batches, fixed_batch, bar.update)
        prepared = Path(tmp) / "prepared.onnx"
        quantized = Path(tmp) / "int8.onnx"
        # Shape inference and graph optimisation first, as onnxruntime recommends.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(quantized), reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8,  # S8S8 QDQ: onnxruntime's recommended CPU setting
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATION_METHODS[method](CalibrationMethod),
            extra_options=extra_options,
        )
        proto = onnx.load(str(quantized))
        images = sum(len(b) for b in batches)
        set_metadata(proto, {**meta, "int8": True, "calibration_images": images})
        onnx.checker.check_model(proto)
        if not images:
            raise UserError("no calibration images")
        return atomic_write(out, lambda path: onnx.save(proto, path))
