"""Evaluate classifiers the way the paper did: top-1/top-5, per-class accuracy, confusion
matrix, multi-crop testing (1, 10 or 144 views, softmax averaged) and ensembles.

The core works on plain tensors (uint8 images N x C x H x W and int64 labels) and on any
classifier from `googlenet.predict` (a torch model or an ONNX export), so training, the
CLI and the Python API share it.

Crop geometry (paper, Section 7, at input 224): the image is resized to four scales whose
shorter side is 256, 288, 320 and 352; from each, the left, centre and right squares
(top, centre, bottom for portrait images) are taken; from each square the four corner
and the centre 224 x 224 crops plus the whole square resized to 224; each of these and its
mirror: 4 x 3 x 6 x 2 = 144 views. 10 crops are the four corners and the centre of the
256 image and their mirrors. For other input sizes every length scales by input/224.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor

from .errors import UserError
from .predict import (Classifier, centre_crop, centre_offset, load_classifier, normalize,
                      pick_backend, resize_shorter, to_channels, to_float)

CROPS = (1, 10, 144)
PAPER_SCALES = (256, 288, 320, 352)  # shorter side of the four test scales at input 224
PAPER_RESIZE = 256  # the paper's single-crop shorter side, which is also its first test scale


# ------------------------------------------------------------------ crop geometry
def scaled_scales(resize: int) -> tuple[int, ...]:
    """The paper's four shorter sides scaled to a model's single-crop shorter side `resize`
    (exact at 256: 256..352). Relative to `resize`, not the input size: a 28-px Fashion-MNIST
    model is tested on 28-px images (resize 28), and scales taken from 28 x 256/224 = 32 up
    showed it only images larger than it ever saw (10-crop fell from 81.2% to 75.8%)."""
    return tuple(round(resize * s / PAPER_RESIZE) for s in PAPER_SCALES)


def five_crop_offsets(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """(top, left) of the four corner crops (TL, TR, BL, BR) and the centre crop."""
    bottom, right = height - size, width - size
    return [(0, 0), (0, right), (bottom, 0), (bottom, right),
            (centre_offset(height, size), centre_offset(width, size))]


def square_offsets(height: int, width: int) -> list[tuple[int, int]]:
    """(top, left) of the three squares of side min(H, W): left/centre/right for landscape
    images, top/centre/bottom for portrait ones (three equal squares if already square)."""
    side = min(height, width)
    if width >= height:
        return [(0, 0), (0, centre_offset(width, side)), (0, width - side)]
    return [(0, 0), (centre_offset(height, side), 0), (height - side, 0)]


def _crop(x: Tensor, top: int, left: int, size: int) -> Tensor:
    return x[..., top:top + size, left:left + size]


def _with_mirrors(views: list[Tensor]) -> list[Tensor]:
    return views + [v.flip(-1) for v in views]


@dataclass(frozen=True)
class CropPlan:
    """Which views of an image are classified. `views(x)` maps a float batch N x C x H x W
    to a list of N x C x input_size x input_size tensors (one per view)."""

    crops: int
    input_size: int
    resize: int  # shorter side for the single centre crop
    scales: tuple[int, ...]  # shorter sides for 10 (first only) and 144 crops

    @classmethod
    def for_meta(cls, meta: dict, crops: int) -> "CropPlan":
        if crops not in CROPS:
            raise UserError(f"--crops must be one of {', '.join(map(str, CROPS))}, not {crops}")
        size = int(meta["input_size"])
        resize = int(meta["resize"])
        return cls(crops, size, resize, scaled_scales(resize))

    @property
    def num_views(self) -> int:
        return self.crops

    @property
    def is_paper_geometry(self) -> bool:
        return self.scales == PAPER_SCALES

    def describe(self) -> str:
        if self.crops == 1:
            return f"1 crop: shorter side {self.resize}, centre {self.input_size}x{self.input_size}"
        if self.crops == 10 and self.scales[0] == self.input_size:  # e.g. a 28-px model tested at 28 px
            return (f"10 crops: shorter side {self.input_size}, where the 4 corners and the centre are all the "
                    f"{self.input_size}x{self.input_size} centre crop: the image and its mirror, 5 times each")
        if self.crops == 10:
            text = (f"10 crops: shorter side {self.scales[0]}, 4 corners + centre at "
                    f"{self.input_size}x{self.input_size}, and their mirrors")
        else:
            text = (f"144 crops: shorter sides {'/'.join(map(str, self.scales))} x 3 squares x "
                    f"(4 corners + centre at {self.input_size} + whole square) x 2 mirrors")
        if not self.is_paper_geometry:
            text += (f" (the paper's scales relative to its shorter side {PAPER_RESIZE}, here {self.resize}: "
                     f"{'/'.join(map(str, PAPER_SCALES))} -> {'/'.join(map(str, self.scales))})")
        return text

    def views(self, x: Tensor) -> list[Tensor]:
        size = self.input_size
        if self.crops == 1:
            return [centre_crop(resize_shorter(x, self.resize), size)]
        if self.crops == 10:
            image = resize_shorter(x, self.scales[0])
            h, w = image.shape[-2:]
            return _with_mirrors([_crop(image, t, l, size) for t, l in five_crop_offsets(h, w, size)])
        views: list[Tensor] = []
        for scale in self.scales:
            image = resize_shorter(x, scale)
            h, w = image.shape[-2:]
            for top, left in square_offsets(h, w):
                square = _crop(image, top, left, scale)
                six = [_crop(square, t, l, size) for t, l in five_crop_offsets(scale, scale, size)]
                six.append(resize_shorter(square, size))
                views.extend(_with_mirrors(six))
        return views


# ------------------------------------------------------------------ probabilities
Batches = Iterable[tuple[Tensor, Tensor]]


def array_batches(images: Tensor, labels: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    for start in range(0, len(labels), batch_size):
        yield images[start:start + batch_size], labels[start:start + batch_size]


def class_probabilities(classifier: Classifier, batches: Batches, crops: int = 1,
                        batch_size: int = 256, on_progress: Callable[[int], None] | None = None
                        ) -> tuple[Tensor, Tensor]:
    """Softmax probabilities (N x classes, averaged over the crop plan's views) and labels.

    `batches` yields (uint8 images n x C x H x W, labels n); images within a batch share a size.
    Views are packed into forward passes of about `batch_size` images; `on_progress(n)` is
    called after each pass with the number of images it finished.
    """
    meta = classifier.meta
    plan = CropPlan.for_meta(meta, crops)
    channels, mean, std = int(meta["in_chans"]), meta["mean"], meta["std"]
    # Crop, resize and normalise where the model runs (on a GPU that is far faster than the CPU).
    device = getattr(classifier, "device", torch.device("cpu"))
    probs: list[Tensor] = []
    labels_out: list[Tensor] = []
    pending: list[Tensor] = []  # n x V x C x S x S stacks of normalised views
    pending_rows = 0

    def run() -> None:
        nonlocal pending_rows
        stack = torch.cat(pending)
        n, v = stack.shape[:2]
        logits = classifier(stack.flatten(0, 1))
        probs.append(torch.softmax(logits.float(), dim=1).view(n, v, -1).mean(dim=1).cpu())
        pending.clear()
        pending_rows = 0
        if on_progress is not None:
            on_progress(n)

    for images, labels in batches:
        x = to_float(to_channels(images.to(device, non_blocking=True), channels))
        views = torch.stack(plan.views(x), dim=1)  # n x V x C x S x S
        pending.append(normalize(views, mean, std))
        labels_out.append(labels.to(torch.int64).reshape(-1))
        pending_rows += views.shape[0] * views.shape[1]
        if pending_rows >= batch_size:
            run()
    if pending:
        run()
    if not probs:
        raise UserError("the test set is empty; nothing to evaluate")
    return torch.cat(probs), torch.cat(labels_out)


def images_per_chunk(batch_size: int, crops: int) -> int:
    """Images per input batch so that their views fill about one forward batch."""
    return max(1, batch_size // crops)


# ------------------------------------------------------------------ metrics
@dataclass
class EvalResult:
    """Accuracy figures for one evaluation (fractions in [0, 1])."""

    num_images: int
    top1: float
    top5: float
    topk: int  # the k of "top-5" (fewer when there are fewer than 5 classes)
    class_names: list[str]
    per_class_correct: list[int]
    per_class_total: list[int]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    crops: int = 1
    crop_description: str = ""
    models: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)  # what ran each model, e.g. "ncnn on the CPU"
    dataset: str = ""
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one-line reasons for unreadable test images
    seconds: float = 0.0

    @property
    def top1_error(self) -> float:
        return 1.0 - self.top1

    @property
    def top5_error(self) -> float:
        return 1.0 - self.top5

    @property
    def per_class_accuracy(self) -> list[float | None]:
        return [c / t if t else None for c, t in zip(self.per_class_correct, self.per_class_total)]

    @property
    def views_per_second(self) -> float:
        """Forward passes' worth of single images a second: images x crops x models."""
        return self.num_images * self.crops * max(1, len(self.models)) / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(top1_error=self.top1_error, top5_error=self.top5_error,
                   per_class_accuracy=self.per_class_accuracy, views_per_second=self.views_per_second)
        return out


def compute_metrics(probs: Tensor, labels: Tensor, class_names: Sequence[str], topk: int = 5) -> EvalResult:
    """top-1/top-k accuracy, per-class counts and the confusion matrix from probabilities."""
    num_classes = len(class_names)
    if probs.ndim != 2 or probs.shape[1] != num_classes or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probabilities {tuple(probs.shape)} do not match {labels.shape[0]} labels "
                         f"and {num_classes} classes")
    labels = labels.to(torch.int64)
    k = min(topk, num_classes)
    top = probs.topk(k, dim=1).indices
    predicted = top[:, 0]
    correct1 = predicted == labels
    correctk = (top == labels[:, None]).any(dim=1)
    confusion = torch.bincount(labels * num_classes + predicted, minlength=num_classes ** 2)
    confusion = confusion.view(num_classes, num_classes)
    n = int(labels.shape[0])
    return EvalResult(
        num_images=n,
        top1=float(correct1.double().mean()) if n else 0.0,
        top5=float(correctk.double().mean()) if n else 0.0,
        topk=k,
        class_names=list(class_names),
        per_class_correct=confusion.diagonal().tolist(),
        per_class_total=confusion.sum(dim=1).tolist(),
        confusion=confusion.tolist(),
    )


# ------------------------------------------------------------------ ensembles
def check_same_classes(classifiers: Sequence[Classifier], names: Sequence[str]) -> list[str]:
    """All models must predict the same classes in the same order (else averaging is wrong)."""
    reference = list(classifiers[0].meta["class_names"])
    for classifier, name in zip(classifiers[1:], names[1:]):
        other = list(classifier.meta["class_names"])
        if other != reference:
            what = (f"{len(other)} classes vs {len(reference)}" if len(other) != len(reference)
                    else "the same number of classes with different names or order")
            raise UserError(f"cannot ensemble {name} with {names[0]}: {what}; "
                            "an ensemble needs models trained on the same classes")
    return reference


def ensemble_probabilities(classifiers: Sequence[Classifier], make_batches, crops: int = 1,
                           batch_size: int = 256, on_progress: Callable[[int], None] | None = None
                           ) -> tuple[Tensor, Tensor]:
    """Softmax averaged over every model (and, within each, over its crop views).

    make_batches(classifier) returns a fresh batch iterable for one pass over the data.
    """
    total: Tensor | None = None
    labels: Tensor | None = None
    for classifier in classifiers:
        probs, labels = class_probabilities(classifier, make_batches(classifier), crops, batch_size, on_progress)
        total = probs if total is None else total + probs
    assert total is not None and labels is not None
    return total / len(classifiers), labels


def evaluate_arrays(classifiers: Classifier | Sequence[Classifier], images: Tensor, labels: Tensor,
                    crops: int = 1, batch_size: int = 256, topk: int = 5,
                    model_names: Sequence[str] | None = None) -> EvalResult:
    """Evaluate one classifier or an ensemble on in-memory uint8 images and int labels."""
    if not isinstance(classifiers, (list, tuple)):
        classifiers = [classifiers]
    names = list(model_names or [f"model{i}" for i in range(len(classifiers))])
    class_names = check_same_classes(classifiers, names)
    chunk = images_per_chunk(batch_size, crops)
    start = time.perf_counter()
    probs, labels = ensemble_probabilities(
        classifiers, lambda _c: array_batches(images, labels, chunk), crops, batch_size)
    result = compute_metrics(probs, labels, class_names, topk)
    result.seconds = time.perf_counter() - start
    result.crops = crops
    result.crop_description = CropPlan.for_meta(classifiers[0].meta, crops).describe()
    result.models = names
    return result


# ------------------------------------------------------------------ files and datasets
def _check_dataset_classes(dataset_names: Sequence[str], model_names: Sequence[str], dataset: str,
                           weights: str) -> list[str]:
    notes: list[str] = []
    if len(dataset_names) != len(model_names):
        classes = "class" if len(dataset_names) == 1 else "classes"
        raise UserError(f"{dataset} has {len(dataset_names)} {classes} but {weights} predicts "
                        f"{len(model_names)}; evaluate it on the dataset it was trained on (--dataset)")
    if list(dataset_names) != list(model_names):
        notes.append(f"warning: {dataset} class names differ from the weights' (compared by index)")
    return notes


def folder_classes_to_model(folder_names: Sequence[str], model_names: Sequence[str], root: str | os.PathLike,
                            weights: str) -> tuple[list[int] | None, list[str]]:
    """(model class index of each of the data's classes, notes): image folders list their classes
    in alphabetical order, which is rarely the order a model was trained in (Fashion-MNIST's
    "Ankle boot" folder comes first, class 9 of the model), and a model fine-tuned on such a
    folder keeps that order. Matched by name; when no name matches, by index, with a warning;
    a partial match is an error. None when the orders already agree."""
    from .data.datasets import match_class_names

    if list(folder_names) == list(model_names):
        return None, []
    matched = match_class_names(folder_names, model_names)
    unmatched = [name for name, i in zip(folder_names, matched) if i is None]
    if not unmatched and len(set(matched)) == len(matched):
        return matched, [f"note: the {len(folder_names)} classes of {root} were matched to the classes of "
                         f"{weights} by name"]
    if len(unmatched) < len(folder_names):
        shown = ", ".join(unmatched[:5]) + (", ..." if len(unmatched) > 5 else "")
        names = ", ".join(list(model_names)[:5]) + (", ..." if len(model_names) > 5 else "")
        raise UserError(f"{root} has {len(folder_names)} classes and {len(unmatched)} of them ({shown}) match none of "
                        f"the {len(model_names)} classes of {weights} ({names}); rename those folders after the "
                        "model's classes")
    return None, _check_dataset_classes(folder_names, model_names, "imagefolder", weights)


def _image_folder_batches(root: str | os.PathLike, limit: int | None, skipped: list[str]):
    """(class names, image count, batch factory) for DIR/val/<class>/*. The factory takes the
    channel count of the model about to run: each model of an ensemble gets the files decoded
    for its own input (an RGB model next to a grayscale one must still see colour). Files are
    decoded with the same guarded reader as predict; unreadable ones are skipped and listed in
    `skipped`, and a folder with none readable is an error that says why (not "empty")."""
    from .data.datasets import image_folder, spread_over_classes
    from .images import read_readable

    folder = image_folder(root, "test")
    samples = spread_over_classes(folder.samples, limit)  # the same files `train --limit-test` tests on
    class_names = folder.class_names
    paths = [path for path, _ in samples]

    def batches(channels: int) -> Iterator[tuple[Tensor, Tensor]]:
        skipped.clear()
        for index, image in read_readable(paths, channels, skipped, str(root)):
            yield image.unsqueeze(0), torch.tensor([samples[index][1]])

    return class_names, len(samples), batches


def torch_only_flags_note(paths: Sequence[str], backend: str, device: str, bf16: bool) -> list[str]:
    """--bf16 and --device steer the torch backend only: say so when a model ran without them
    (in ONNX Runtime or ncnn, on the CPU in fp32)."""
    on_cpu_anyway = device.lower().partition(":")[0] in ("auto", "cpu")  # cpu:0 is the CPU too (device.py)
    ignored = (["--bf16"] if bf16 else []) + ([] if on_cpu_anyway else [f"--device {device}"])
    runtimes = {"onnxruntime": "ONNX Runtime", "ncnn": "ncnn"}
    outside = [(p, runtimes[ran]) for p in paths if (ran := pick_backend(p, backend)) in runtimes]
    if not (ignored and outside):
        return []
    verb = "apply" if len(ignored) > 1 else "applies"
    where = " and ".join(sorted({runtime for _, runtime in outside}))
    return [f"note: {', '.join(p for p, _ in outside)} ran in {where} on the CPU in fp32; {' and '.join(ignored)} "
            f"{verb} to the torch backend only"]


def evaluate(weights: str | os.PathLike, dataset: str | None = None, data_dir: str | os.PathLike | None = None,
             limit_test: int | None = None, crops: int = 1, ensemble: Sequence[str | os.PathLike] = (),
             batch_size: int = 256, device: str = "auto", bf16: bool = False, backend: str = "auto",
             progress: bool = False) -> EvalResult:
    """Python API of `googlenet eval`: evaluate a weights file (or an ensemble) on a test set.

    limit_test: the first N test images (an image folder: N spread over its classes), as
      `--limit-test N`.
    progress: progress on stderr (images done over all models, img/s, time left): a bar on a
      terminal, else a line a minute (googlenet.progress).
    """
    paths = [str(weights), *map(str, ensemble)]
    if crops not in CROPS:
        raise UserError(f"--crops must be one of {', '.join(map(str, CROPS))}, not {crops}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be positive, not {batch_size}")
    if limit_test is not None and limit_test < 1:
        raise UserError(f"--limit-test must be a positive number of images, not {limit_test}")
    classifiers = [load_classifier(p, backend=backend, device=device, bf16=bf16) for p in paths]
    class_names = check_same_classes(classifiers, paths)
    dataset = dataset or classifiers[0].meta.get("dataset")
    if not dataset:
        raise UserError(f"{paths[0]} does not record its dataset; pass --dataset NAME (and --data DIR)")
    notes: list[str] = torch_only_flags_note(paths, backend, device, bf16)
    skipped: list[str] = []
    if dataset == "imagefolder":
        if data_dir is None:
            raise UserError("--dataset imagefolder needs --data DIR (with test/<class>/ or val/<class>/ image folders)")
        names, count, batches_for = _image_folder_batches(data_dir, limit_test, skipped)
        to_model, matched_notes = folder_classes_to_model(names, class_names, data_dir, paths[0])
        notes += matched_notes
        if to_model is None:
            make_batches = lambda c: batches_for(int(c.meta["in_chans"]))  # noqa: E731
        else:
            model_label = torch.tensor(to_model)
            make_batches = lambda c: ((x, model_label[y]) for x, y in batches_for(int(c.meta["in_chans"])))  # noqa: E731
    else:
        from .data import load_dataset

        data = load_dataset(dataset, "test", data_dir, limit_test)
        to_model, matched_notes = folder_classes_to_model(data.class_names, class_names, dataset, paths[0])
        notes += matched_notes
        labels = data.labels if to_model is None else torch.tensor(to_model)[data.labels]
        count = len(data)
        chunk = images_per_chunk(batch_size, crops)
        make_batches = lambda _c: array_batches(data.images, labels, chunk)  # noqa: E731
        for classifier, path in zip(classifiers, paths):
            if int(classifier.meta["in_chans"]) != data.in_chans:
                notes.append(f"note: {path} takes {classifier.meta['in_chans']}-channel input; "
                             f"the {data.in_chans}-channel {dataset} images were converted")
    start = time.perf_counter()
    from .progress import progress as progress_display

    with progress_display(count * len(classifiers), "eval", enabled=progress) as bar:
        probs, labels = ensemble_probabilities(classifiers, make_batches, crops, batch_size, bar.update)
    result = compute_metrics(probs, labels, class_names)
    result.seconds = time.perf_counter() - start
    result.crops = crops
    plan = CropPlan.for_meta(classifiers[0].meta, crops)
    result.crop_description = plan.describe()
    result.models = paths
    result.backends = [getattr(c, "backend", type(c).__name__) for c in classifiers]
    result.dataset = dataset
    if skipped:
        notes.append(f"warning: skipped {len(skipped)} unreadable image(s) of {count}; accuracy is over the rest")
    result.notes = notes
    result.skipped = list(skipped)
    return result


# ------------------------------------------------------------------ text report
def format_result(result: EvalResult, max_confusion_classes: int = 20, max_table_classes: int = 100) -> str:
    """The human-readable report `googlenet eval` prints."""
    models = result.models[0] if len(result.models) == 1 else (
        f"ensemble of {len(result.models)}: " + ", ".join(result.models))
    lines = [
        f"{models} on {result.dataset or 'the test set'}: {result.num_images} images, {result.crop_description}",
        f"top-1 accuracy {result.top1:7.2%}   error {result.top1_error:7.2%}",
        f"top-{result.topk} accuracy {result.top5:7.2%}   error {result.top5_error:7.2%}",
    ]
    if result.seconds:
        ran = "; ".join(dict.fromkeys(result.backends))  # each backend once, in order
        lines.append(f"time {result.seconds:.1f} s ({result.views_per_second:,.0f} views/s"
                     + (f"; {ran})" if ran else ")"))
    lines += result.notes  # before the tables they qualify (a by-index class match, skipped files)
    width = max([len(n) for n in result.class_names] + [5])
    rows = list(zip(result.class_names, result.per_class_accuracy, result.per_class_correct,
                    result.per_class_total))
    title = "per-class accuracy:"
    if len(rows) > max_table_classes:  # e.g. ImageNet: the 10 worst and 10 best classes
        ranked = sorted((r for r in rows if r[1] is not None), key=lambda r: r[1])
        rows = ranked[:10] + ranked[-10:]
        title = f"per-class accuracy, the 10 worst and 10 best of {len(result.class_names)} classes (all in --json):"
    lines += ["", title, f"  {'class':<{width}}  accuracy  correct/total"]
    for name, acc, correct, total in rows:
        shown = f"{acc:8.2%}" if acc is not None else f"{'-':>8}"
        lines.append(f"  {name:<{width}}  {shown}  {correct}/{total}")
    k = len(result.class_names)
    lines.append("")
    if k <= max_confusion_classes:
        lines.append("confusion matrix (rows: true class, columns: predicted class, by index):")
        cell = max(len(str(max((max(r) for r in result.confusion), default=0))), len(str(k - 1)))
        lines.append("  " + " " * len(str(k - 1)) + " " + " ".join(f"{j:>{cell}}" for j in range(k)))
        for i, row in enumerate(result.confusion):
            lines.append(f"  {i:>{len(str(k - 1))}} " + " ".join(f"{v:>{cell}}" for v in row)
                         + f"  {result.class_names[i]}")
    else:
        lines.append(f"confusion matrix: {k} x {k}, omitted here (see --json)")
    return "\n".join(lines)


__all__ = ["CROPS", "CropPlan", "EvalResult", "array_batches", "check_same_classes", "class_probabilities",
           "compute_metrics", "ensemble_probabilities", "evaluate", "evaluate_arrays", "five_crop_offsets",
           "format_result", "scaled_scales", "square_offsets"]
