"""Classify image files with a trained model: decode safely, preprocess from the weights'
metadata, report the top-k labels with probabilities.

The unit everything here works with is a *classifier*: a callable that maps a normalised
float batch N x C x H x W to logits, with a `.meta` dict saying how to preprocess
(class_names, input_size, resize, mean, std, in_chans). `TorchClassifier` wraps a model
loaded from a weights file, `NcnnClassifier` the same model converted for ncnn, and
`googlenet.onnx_backend.OnnxClassifier` an ONNX export.
`googlenet eval` uses the same classifiers.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

import torch
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from .errors import RunError, UserError, first_line
from .images import DEFAULT_MAX_PIXELS, ImageReadError, read_image
from .models.weights import IMAGENET_MEAN, IMAGENET_STD

BACKENDS = ("auto", "torch", "onnxruntime", "ncnn")  # auto: onnxruntime for .onnx, ncnn for .param, else torch
# The paper's single-crop geometry: shorter side 256, centre 224.
PAPER_INPUT, PAPER_RESIZE = 224, 256
MAX_ASPECT = 16  # longest kept ratio of the longer to the shorter side (bounds memory)


class Classifier(Protocol):
    meta: dict

    def __call__(self, x: Tensor) -> Tensor: ...


# ------------------------------------------------------------------ metadata
def complete_meta(meta: dict, num_classes: int, in_chans: int, native_size: int = PAPER_INPUT,
                  fallback: dict | None = None) -> dict:
    """The weights' metadata with every preprocessing key filled in.

    Missing keys come from `fallback` (e.g. the dataset's statistics), else from the
    model: its native input size, the paper's 256/224 resize ratio at 224 px (none for
    small inputs), ImageNet mean/std for RGB, 0.5/0.5 otherwise, and class names "0".."N-1".
    """
    out = {**(fallback or {}), **{k: v for k, v in (meta or {}).items() if v is not None}}
    names = out.get("class_names") or [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise UserError(f"the weights' metadata lists {len(names)} class names but the model has "
                        f"{num_classes} outputs; re-save the weights with matching class_names")
    size = int(out.get("input_size") or native_size)
    resize = int(out.get("resize") or (round(size * PAPER_RESIZE / PAPER_INPUT) if size >= PAPER_INPUT else size))
    rgb = in_chans == 3
    mean = [float(m) for m in (out.get("mean") or (IMAGENET_MEAN if rgb else (0.5,) * in_chans))]
    std = [float(s) for s in (out.get("std") or (IMAGENET_STD if rgb else (0.5,) * in_chans))]
    if len(mean) != in_chans or len(std) != in_chans:
        raise UserError(f"the weights' metadata has mean/std for {len(mean)} channel(s) but the model takes "
                        f"{in_chans}; re-save the weights with per-channel mean and std")
    if resize < size:
        raise UserError(f"metadata resize {resize} is smaller than input_size {size}")
    out.update(class_names=list(names), input_size=size, resize=resize, mean=mean, std=std,
               in_chans=int(in_chans), num_classes=int(num_classes))
    return out


# ------------------------------------------------------------------ preprocessing
def to_channels(images: Tensor, channels: int) -> Tensor:
    """uint8/float N x C x H x W (or C x H x W) to 1 or 3 channels: luma, repeat, or as is."""
    have = images.shape[-3]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(*images.shape[:-3], 3, *images.shape[-2:])
    if have == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], device=images.device).view(3, 1, 1)
        luma = (images.float() * weights).sum(dim=-3, keepdim=True)
        return luma.round().clamp(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else luma
    raise UserError(f"cannot map {have}-channel images to a {channels}-channel model")


def resize_shorter(x: Tensor, size: int) -> Tensor:
    """Resize so the shorter side is `size` (bilinear, antialiased); exact no-op if it already is.

    A strip longer than MAX_ASPECT times its width keeps only its centre MAX_ASPECT x width
    part first: resizing a 1 x 100,000 image to a shorter side of 256 would otherwise need
    gigabytes, and the centre crops never look that far out.
    """
    h, w = x.shape[-2:]
    short = min(h, w)
    if max(h, w) > MAX_ASPECT * short:
        keep = MAX_ASPECT * short
        top, left = (centre_offset(h, keep), 0) if h > w else (0, centre_offset(w, keep))
        x = x[..., top:top + min(h, keep), left:left + min(w, keep)]
    if short == size:
        return x
    return TF.resize(x, [size], antialias=True)


def centre_offset(length: int, crop: int) -> int:
    # torchvision's CenterCrop rounding (half to even), so predict/eval crop exactly where the
    # training-time evaluation transform does.
    return int(round((length - crop) / 2.0))


def centre_crop(x: Tensor, size: int) -> Tensor:
    h, w = x.shape[-2:]
    if h < size or w < size:
        x = resize_shorter(x, size)
        h, w = x.shape[-2:]
    top, left = centre_offset(h, size), centre_offset(w, size)
    return x[..., top:top + size, left:left + size]


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - mean_t) / std_t


def to_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; float input is taken as already in [0, 1]."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def preprocess(images: Tensor, meta: dict) -> Tensor:
    """uint8 (N x) C x H x W -> the normalised float input the classifier expects (single crop):
    channels converted, shorter side resized to meta["resize"], centre input_size crop."""
    x = to_float(to_channels(images, meta["in_chans"]))
    x = centre_crop(resize_shorter(x, meta["resize"]), meta["input_size"])
    return normalize(x, meta["mean"], meta["std"])


# ------------------------------------------------------------------ classifiers
def model_meta(model: nn.Module, fallback_meta: dict | None = None) -> dict:
    """The preprocessing and class names a classifier of `model` feeds and reports."""
    native = getattr(getattr(model, "variant", None), "input_size", PAPER_INPUT)
    return complete_meta(getattr(model, "meta", {}) or {}, model.num_classes, model.in_chans, native, fallback_meta)


class TorchClassifier:
    """A GoogLeNet in eval mode on a device: normalised float batch -> float32 logits on CPU."""

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu", bf16: bool = False,
                 fallback_meta: dict | None = None) -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.bf16 = bf16
        self.meta = model_meta(model, fallback_meta)
        self.backend = f"torch on {self.device}" + (" in bf16" if bf16 else "")

    @torch.inference_mode()
    def __call__(self, x: Tensor) -> Tensor:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16
                    else contextlib.nullcontext())
        with autocast:
            logits = self.model(x)
        return logits.float().cpu()


class NcnnClassifier:
    """Weights converted for ncnn at the input size predict feeds it (a few seconds, at load)
    and run on the CPU: the lowest exact per-image latency measured on x86 here (BENCHMARKS.md),
    so worth its start-up for many images."""

    device = torch.device("cpu")
    backend = "ncnn on the CPU"

    def __init__(self, model: nn.Module) -> None:
        from .ncnn_backend import NcnnEngine

        self.meta = model_meta(model)
        size = int(self.meta["input_size"])
        self.engine = NcnnEngine(model.eval(), input_shape=(1, model.in_chans, size, size))

    @classmethod
    def from_export(cls, param: str | os.PathLike) -> "NcnnClassifier":
        """The files `googlenet export --format ncnn` wrote: no conversion at load."""
        from .export import load_ncnn_export
        from .ncnn_backend import NcnnEngine

        param, weights, meta = load_ncnn_export(param)
        again = "export it again with `googlenet export WEIGHTS --format ncnn`"
        classifier = cls.__new__(cls)
        try:
            classifier.meta = complete_meta(meta, int(meta["num_classes"]), int(meta["in_chans"]))
            size, chans = int(classifier.meta["input_size"]), int(classifier.meta["in_chans"])
            classes = len(classifier.meta["class_names"])
            engine = NcnnEngine.load(param, weights, (1, chans, size, size), classes)
            # One example through the graph: a .bin or .json that does not belong to this
            # .param shows here (wrong output size, NaN from a wrong channel count).
            logits = engine(torch.rand(1, chans, size, size, generator=torch.Generator().manual_seed(0)))
        except UserError as e:
            raise UserError(f"{param}: {e}") from None
        except (RuntimeError, OSError, ValueError, TypeError) as e:  # ncnn refused the files; bad metadata
            raise UserError(f"{param}: {first_line(e)}; {again}") from None
        if not torch.isfinite(logits).all():
            raise UserError(f"{param}: gives non-finite outputs with its own metadata; {again}")
        classifier.engine = engine
        return classifier

    def __call__(self, x: Tensor) -> Tensor:
        return self.engine(x)


def pick_backend(weights: str | os.PathLike, backend: str = "auto") -> str:
    """The backend for a file: "auto" runs .onnx files with onnxruntime, .param files (ncnn
    exports) with ncnn and the rest with torch; "ncnn" also converts .safetensors weights for
    ncnn, and leaves .onnx files to onnxruntime (so an ensemble may mix them)."""
    name = str(weights).lower()
    if backend in ("auto", "ncnn") and name.endswith(".onnx"):
        return "onnxruntime"
    if backend == "auto":
        return "ncnn" if name.endswith(".param") else "torch"
    return backend


# What an export file is, by the backend "auto" picks for it: for messages to a wrong --backend.
EXPORT_KINDS = {"onnxruntime": "an ONNX model", "ncnn": "an ncnn export"}


def _export_given_to(weights: str | os.PathLike, backend: str) -> UserError | None:
    """The error for an export file handed to a backend that cannot run it, else None."""
    kind = pick_backend(weights)
    if kind in EXPORT_KINDS and kind != backend:
        # auto, not the runtime alone: with --ensemble the other files may be .safetensors
        return UserError(f"{weights} is {EXPORT_KINDS[kind]}; run it with --backend auto (or {kind})")
    return None


def load_classifier(weights: str | os.PathLike, backend: str = "auto", device: str = "auto",
                    bf16: bool = False) -> Classifier:
    """A classifier from a weights file (.safetensors for torch, .onnx for onnxruntime;
    backend "auto" picks by the file's suffix; "onnxruntime" and "ncnn" export or convert
    .safetensors weights for themselves at load, a few seconds)."""
    backend = pick_backend(weights, backend)
    if backend == "torch":
        from .device import resolve_device

        model = _our_model(weights, backend)
        with _naming(weights):
            return TorchClassifier(model, resolve_device(device), bf16=bf16)
    if backend == "ncnn":
        return _ncnn_classifier(weights)
    if backend == "onnxruntime":
        return _onnxruntime_classifier(weights)
    raise UserError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


@contextlib.contextmanager
def _naming(weights: str | os.PathLike):
    """A UserError about a model's metadata (mean/std, class names) names its file."""
    try:
        yield
    except UserError as e:
        raise UserError(f"{weights}: {e}") from None


RUNS = ".safetensors weights, a run folder, an .onnx file or an ncnn .param file"  # what predict/eval take


def _our_model(weights: str | os.PathLike, backend: str) -> nn.Module:
    """load_weights, or one line that says which file predict and eval can run instead."""
    from .models.weights import TAKES_WEIGHTS, WeightsError, load_weights

    path = Path(weights)
    graph = path.with_suffix(".param")
    if path.suffix.lower() in (".bin", ".json") and graph.is_file():  # the other two files of an ncnn export
        raise UserError(f"{path} is part of an ncnn export; pass its graph file, {graph}")
    try:
        return load_weights(weights)
    except WeightsError as e:  # its message already names our other outputs (TorchScript, last.pt)
        wrong_backend = _export_given_to(weights, backend)
        if wrong_backend is not None:
            raise wrong_backend from None
        # load_weights speaks for every command; predict and eval run exports too
        message = str(e).replace(TAKES_WEIGHTS, f"predict and eval take {RUNS}")
        raise UserError(message) from None


def _ncnn_classifier(weights: str | os.PathLike) -> Classifier:
    """A .param export as it is; our weights converted by pnnx first (a few seconds)."""
    exported = pick_backend(weights) == "ncnn"  # a .param export, converted already: pnnx not needed
    _check_ncnn(converter=not exported)
    if exported:
        return NcnnClassifier.from_export(weights)
    model = _our_model(weights, "ncnn")
    try:
        with _naming(weights):
            return NcnnClassifier(model)
    except (RuntimeError, OSError) as e:  # pnnx or ncnn could not take this model
        raise RunError(f"{weights}: {first_line(e)}; run it with --backend torch instead") from None


def _onnxruntime_classifier(weights: str | os.PathLike) -> Classifier:
    """An .onnx file as it is; our weights exported to ONNX first (a few seconds)."""
    wrong_backend = _export_given_to(weights, "onnxruntime")
    if wrong_backend is not None:
        raise wrong_backend
    ours = Path(weights).is_dir() or str(weights).lower().endswith(".safetensors")
    try:
        if ours:
            import onnx  # noqa: F401 -- our weights are exported first; running an .onnx file needs no onnx
        from .onnx_backend import OnnxClassifier
    except ImportError as e:
        raise UserError(f"--backend onnxruntime is unavailable ({e}); install it with "
                        "`pip install 'googlenet[onnx]'`") from None
    classifier = _exported_for_onnxruntime(weights) if ours else OnnxClassifier(weights)
    meta = dict(classifier.meta)
    names = meta.get("class_names") or []
    num_classes = int(meta.get("num_classes") or len(names))
    if not num_classes:
        raise UserError(f"{weights}: the ONNX model carries no class names; re-export it with "
                        "`googlenet export WEIGHTS --format onnx`")
    with _naming(weights):
        classifier.meta = complete_meta(meta, num_classes, int(meta.get("in_chans", 3)))
    return classifier


def _exported_for_onnxruntime(weights: str | os.PathLike):
    """Our weights exported to ONNX as `googlenet export --dynamic-batch` writes them (a few
    seconds, checked against PyTorch) and loaded into onnxruntime, which keeps the graph in
    memory: on the 2-core CPU it evaluated googlenet_cifar at 28 px, batch 256, at 2.05x the
    torch backend's img/s (BENCHMARKS.md)."""
    from .export import open_in_onnxruntime
    from .models.weights import load_weights

    model = load_weights(weights)  # WeightsError (one line) for anything that is not ours
    try:
        with _naming(weights):
            return open_in_onnxruntime(model, dynamic_batch=True)
    except (RuntimeError, OSError) as e:
        raise RunError(f"{weights}: the ONNX export failed ({first_line(e)}); run it with --backend torch "
                       "instead") from None


def _check_ncnn(converter: bool) -> None:
    """--backend ncnn runs exports with ncnn, and converts our weights itself with pnnx."""
    from .ncnn_backend import require_ncnn

    try:
        require_ncnn(converter)
    except ImportError as e:
        raise UserError(f"--backend ncnn: {e}") from None


# ------------------------------------------------------------------ prediction
@dataclass
class Prediction:
    """The top-k for one file, or the one-line reason it could not be classified."""

    path: str
    labels: list[str] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "predictions": [
            {"label": label, "index": index, "probability": prob}
            for label, index, prob in zip(self.labels, self.indices, self.probabilities)]}


def top_k(probabilities: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(values, indices) of the k largest per row, k clipped to the class count."""
    return probabilities.topk(min(k, probabilities.shape[1]), dim=1)


def predict_files(classifier: Classifier, paths: Iterable[str | os.PathLike], topk: int = 5,
                  batch_size: int = 16, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Prediction]:
    """Yield one Prediction per path, in order; unreadable files yield an error, never raise."""
    if topk < 1:
        raise UserError(f"--topk must be at least 1, not {topk}")
    meta = classifier.meta
    pending: list[tuple[str, Tensor | None, str | None]] = []

    def flush() -> Iterator[Prediction]:
        good = [tensor for _, tensor, _ in pending if tensor is not None]
        probs = torch.softmax(classifier(torch.stack(good)).float(), dim=1) if good else None
        values, indices = top_k(probs, topk) if probs is not None else (None, None)
        row = 0
        for path, tensor, error in pending:
            if tensor is None:
                yield Prediction(path, error=error)
                continue
            idx = indices[row].tolist()
            yield Prediction(path, [meta["class_names"][i] for i in idx], idx, values[row].tolist())
            row += 1
        pending.clear()

    for path in paths:
        try:
            image = read_image(path, meta["in_chans"], max_pixels=max_pixels)
            pending.append((str(path), preprocess(image, meta), None))
        except ImageReadError as e:
            pending.append((str(path), None, str(e)))
        if len(pending) >= batch_size:
            yield from flush()
    if pending:
        yield from flush()


def predict(weights: str | os.PathLike, images: str | os.PathLike | Sequence[str | os.PathLike], topk: int = 5,
            backend: str = "auto", device: str = "auto") -> list[Prediction]:
    """Python API of `googlenet predict`: one Prediction per image. `images` is one path or a
    list of them; a folder stands for the image files directly in it, as on the command line."""
    from .images import expand_folders

    if isinstance(images, (str, os.PathLike)):  # one path, not a sequence of its characters
        images = [images]
    classifier = load_classifier(weights, backend=backend, device=device)
    return list(predict_files(classifier, expand_folders([str(p) for p in images]), topk=topk))


def format_prediction(prediction: Prediction) -> str:
    """Human-readable block: the path, then one `probability  label` line per class."""
    lines = [prediction.path]
    for label, prob in zip(prediction.labels, prediction.probabilities):
        lines.append(f"  {prob:7.2%}  {label}")
    return "\n".join(lines)


__all__ = ["BACKENDS", "Classifier", "Prediction", "TorchClassifier", "complete_meta", "format_prediction",
           "load_classifier", "pick_backend", "predict", "predict_files", "preprocess", "top_k"]
