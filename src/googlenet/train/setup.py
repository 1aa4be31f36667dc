"""The pieces a run is built from: model (fresh or fine-tuned, partly frozen), optimizer,
learning-rate schedule, numeric precision and data loaders."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import UserError
from .recipes import TrainConfig

# Modules in forward order; --freeze NAME freezes NAME and everything before it.
FREEZE_ORDER = ("conv1", "conv2", "conv3", "inception3a", "inception3b", "inception4a", "inception4b",
                "inception4c", "inception4d", "inception4e", "inception5a", "inception5b")


# ------------------------------------------------------------------ data
@dataclass
class DataInfo:
    """What the model and the weights metadata need to know about the data."""

    name: str
    class_names: list[str]
    in_chans: int
    input_size: int
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int
    test_size: int


def build_loaders(config: TrainConfig, device: torch.device, model_in_chans: int | None = None,
                  rank: int = 0, world_size: int = 1):
    """(train_loader, test_loader, DataInfo) for the configured dataset."""
    if config.dataset == "imagefolder":
        # Image files convert to any channel count: RGB unless the model takes luma.
        return _folder_loaders(config, device, model_in_chans or 3, rank, world_size)
    from ..data.datasets import load_dataset
    from ..data.gpu_loader import BatchAugment, TensorLoader

    train = load_dataset(config.dataset, "train", config.data, config.limit_train)
    test = load_dataset(config.dataset, "test", config.data, config.limit_test)
    size = config.input_size or train.image_size
    in_chans = model_in_chans or train.in_chans
    augment = BatchAugment(crop_padding=config.crop_padding, flip=config.flip,
                           resized_crop_min_area=config.resized_crop_min_area,
                           random_interpolation=config.random_interpolation,
                           photometric=config.photometric, erasing=config.erasing)
    common = dict(input_size=size, in_chans=in_chans, seed=config.seed, rank=rank, world_size=world_size,
                  channels_last=config.channels_last)
    try:
        # With gradient accumulation a rank's share of a step is accum_steps micro-batches (the loop splits it).
        train_loader = TensorLoader(train, config.batch_size * config.accum_steps, device, augment=augment,
                                    **common)
        eval_batch = max(config.batch_size, 256)
        test_loader = TensorLoader(test, eval_batch, device, shuffle=False, **common)
    except ValueError as e:
        raise UserError(f"{config.dataset} does not fit the model: {e}") from None
    repeat = in_chans // train.in_chans
    info = DataInfo(train.name, train.class_names, in_chans, size, size, tuple(train.mean) * repeat,
                    tuple(train.std) * repeat, len(train), len(test))
    return train_loader, test_loader, info


def _folder_loaders(config: TrainConfig, device: torch.device, in_chans: int, rank: int, world_size: int):
    from ..data import transforms as T
    from ..data.datasets import image_folder, image_folder_stats
    from ..data.folder_loader import FolderLoader

    if not config.data:
        raise UserError("--dataset imagefolder needs --data DIR holding train/<class>/ and val/<class>/ folders")
    # Fine-tuning from weights keeps their preprocessing (size, resize, normalisation) unless told
    # otherwise: Fashion-MNIST weights were refitted to 224-px ImageNet-normalised images.
    weights_meta = _weights_preprocessing(config.weights)
    size = config.input_size or int(weights_meta.get("input_size") or 224)
    same_size = size == weights_meta.get("input_size")
    resize = config.resize or (int(weights_meta["resize"]) if same_size and weights_meta.get("resize") else
                               round(size * 256 / 224))
    mean, std = image_folder_stats(in_chans)
    if len(weights_meta.get("mean") or []) == in_chans == len(weights_meta.get("std") or []):
        mean, std = tuple(weights_meta["mean"]), tuple(weights_meta["std"])
    if config.resized_crop_min_area > 0 and (config.photometric > 0 or config.random_interpolation):
        train_tf = T.paper_train_transform(size, mean, std, config.resized_crop_min_area, config.photometric,
                                           config.random_interpolation)
    else:
        train_tf = T.finetune_train_transform(size, mean, std, config.resized_crop_min_area or 0.25)
    eval_tf = T.eval_transform(size, resize, mean, std)
    if in_chans == 1:
        train_tf, eval_tf = _luma_pipeline(train_tf), _luma_pipeline(eval_tf)
    train = image_folder(config.data, "train", channels=in_chans)
    test = image_folder(config.data, "val", channels=in_chans)
    if train.class_names != test.class_names:
        only = [f"only in {split}/: {', '.join(sorted(set(mine) - set(theirs)))}"
                for split, mine, theirs in (("train", train.class_names, test.class_names),
                                            ("val", test.class_names, train.class_names)) if set(mine) - set(theirs)]
        raise UserError(f"{config.data}: train/ and val/ have different class folders ({'; '.join(only)}); "
                        "give every class a folder in both")
    if len(train.class_names) < 2:  # a one-class "classifier" scores 100% and has learnt nothing
        raise UserError(f"{config.data}: train/ has one class folder ({train.class_names[0]}); a classifier needs "
                        "two or more, one folder of images per class")
    common = dict(train_transform=train_tf, eval_transform=eval_tf, workers=config.workers, seed=config.seed,
                  rank=rank, world_size=world_size, channels_last=config.channels_last)
    train_loader = FolderLoader(_limited(train, config.limit_train), config.batch_size * config.accum_steps,
                                device, **common)
    test_loader = FolderLoader(_limited(test, config.limit_test), config.batch_size, device, **common)
    info = DataInfo("imagefolder", train.class_names, in_chans, size, resize, mean, std,
                    len(train_loader), len(test_loader))
    return train_loader, test_loader, info


def _weights_preprocessing(weights: str | None) -> dict:
    """The input_size/resize/mean/std a weights file (or run folder) records; {} for none or
    "imagenet" (whose preprocessing is the image-folder default anyway)."""
    if weights is None or weights == "imagenet":
        return {}
    from ..models import read_metadata

    meta = read_metadata(weights)
    return {key: meta[key] for key in ("input_size", "resize", "mean", "std") if meta.get(key)}


def _luma_pipeline(transform):
    """An RGB pipeline of data.transforms (each starts with v2.RGB()) made to keep 1-channel images:
    the step that would turn the folder's luma images back into RGB becomes a grayscale one."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Grayscale(1) if isinstance(step, v2.RGB) else step for step in transform.transforms])


def _limited(dataset, limit: int | None):
    """--limit-train/--limit-test on an image folder: N files spread over every class."""
    from ..data.datasets import spread_over_classes

    if limit is not None and limit < len(dataset):
        dataset.samples = spread_over_classes(dataset.samples, limit)
        dataset.imgs = dataset.samples
        dataset.targets = [label for _, label in dataset.samples]
    return dataset


# ------------------------------------------------------------------ model
def build_model(config: TrainConfig, num_classes: int, in_chans: int,
                say: Callable[[str], None] = print, input_size: int | None = None,
                class_names: Sequence[str] | None = None) -> nn.Module:
    """A fresh model, or one started from --weights: classifier replaced if the class count
    differs, its outputs put in the order of the data's `class_names` when the names match;
    a note when `input_size`, the data's, is far from the size they were trained at."""
    from ..models import create_model, load_weights

    options = dict(aux_logits=config.aux_logits, dropout=config.dropout, dropout_aux=config.dropout_aux)
    if config.weights is None:
        return create_model(config.model, num_classes=num_classes, in_chans=in_chans, **options)
    if config.weights == "imagenet":
        model = create_model(config.model, weights="imagenet", aux_logits=config.aux_logits, dropout=config.dropout)
        source = "torchvision's ImageNet weights"
    else:
        model = load_weights(config.weights)
        source = config.weights
        if model.model_name != config.model:
            say(f"note: {source} holds a {model.model_name}; training that model (not {config.model})")
        if config.aux_logits is False and model.aux_logits:
            model.drop_aux()  # records aux_logits=False in model_options itself
    # Grey tensors repeat into an RGB model; image files are re-read as luma for a 1-channel one
    # (the Trainer rebuilds the loaders with the model's channels).
    convertible = (model.in_chans == 3 and in_chans == 1) or (model.in_chans == 1 and config.dataset == "imagefolder")
    if model.in_chans != in_chans and not convertible:
        raise UserError(f"{source} expects {model.in_chans}-channel images, the data has {in_chans}")
    trained_at = int(getattr(model, "meta", {}).get("input_size") or 0)
    if input_size and trained_at and max(trained_at / input_size, input_size / trained_at) >= 2:
        # e.g. ImageNet weights on 28-px Fashion-MNIST: legal, but their filters expect 8x more pixels
        say(f"note: {source} was trained on {trained_at}-px images and the data is {input_size} px; "
            f"--input-size {trained_at} resizes the data to what the weights expect")
    if model.num_classes != num_classes:
        heads = "classifier and auxiliary heads" if model.aux_logits else "classifier"
        say(f"fine-tuning: replacing the {heads} of {source} ({model.num_classes} -> {num_classes} classes)")
        model.reset_classifier(num_classes)  # records the new num_classes itself
    elif class_names is not None:
        _classes_in_data_order(model, class_names, source, say)
    return model


def _classes_in_data_order(model: nn.Module, class_names: Sequence[str], source: str,
                           say: Callable[[str], None]) -> None:
    """The weights' classes under the data's order, matched by name: an image folder lists its
    classes alphabetically, so fine-tuning Fashion-MNIST weights on Fashion-MNIST folders
    trained class 0 ("T-shirt/top") as "Ankle boot" (its accuracy fell from 80% to 24%)."""
    from ..data.datasets import match_class_names

    theirs = list(getattr(model, "meta", {}).get("class_names") or [])
    if not theirs or theirs == list(class_names):
        return
    order = match_class_names(class_names, theirs)
    if None not in order and len(set(order)) == len(order):
        model.reorder_classes(order)
        say(f"note: the classifier of {source} was put in the data's class order (matched by name)")
    else:
        say(f"note: the data's class names differ from those of {source}; its classifier is kept, class by "
            "index, as a starting point")


def freeze_until(model: nn.Module, until: str | None) -> list[str]:
    """Freeze parameters of every module up to and including `until` ("4e", "inception4e", "conv3").

    Returns the frozen module names; the loop keeps them in eval mode (batch norm
    statistics frozen too).
    """
    if not until:
        return []
    name = until if until in FREEZE_ORDER else f"inception{until}"
    if name not in FREEZE_ORDER:
        choices = ", ".join(n.removeprefix("inception") for n in FREEZE_ORDER)
        raise UserError(f"--freeze {until!r} is not a module; choose one of {choices}")
    frozen = list(FREEZE_ORDER[: FREEZE_ORDER.index(name) + 1])
    for module_name in frozen:
        for p in getattr(model, module_name).parameters():
            p.requires_grad_(False)
    return frozen


# ------------------------------------------------------------------ optimisation
# Devices with torch's fused optimizer kernels (one kernel for all parameters): on the 2-core
# CPU the SGD step of googlenet_cifar_fast takes 8.5 ms fused against 26.5 ms per-tensor (a
# batch-32 training step: 348 vs 357 ms); on a GPU, a few launches instead of a dozen foreach ones.
FUSED_OPTIMIZER_DEVICES = ("cpu", "cuda")


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights only (not biases or batch-norm parameters)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    devices = {p.device.type for p in decay + no_decay}
    fused = len(devices) == 1 and devices <= set(FUSED_OPTIMIZER_DEVICES)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, fused=fused or None)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                           fused=fused or None)


class LRSchedule:
    """Learning-rate factor per step (a LambdaLR callable whose attributes are its state).

    onecycle: linear warm-up from 4% to the peak, then linear decay to final_lr_scale;
    cosine: the same warm-up, then a cosine decay; step: factor gamma^(epoch // every).
    """

    def __init__(self, config: TrainConfig, total_steps: int, steps_per_epoch: float) -> None:
        self.kind = config.schedule
        self.total_steps = int(total_steps)
        self.steps_per_epoch = float(steps_per_epoch)
        self.warmup = float(config.warmup)
        self.warmup_steps: float | None = None  # set: warm-up ends at this step whatever total_steps is
        # Set by a budget re-plan after warm-up: from `decay_resumed_at` on, the decay goes on from
        # the progress it had reached there (`decay_progress_then`) and ends at total_steps, so a
        # longer or shorter plan stretches the rest of the decay instead of moving the rate.
        self.decay_resumed_at: int | None = None
        self.decay_progress_then = 0.0
        self.final = float(config.final_lr_scale)
        self.every = float(config.step_every)
        self.gamma = float(config.step_gamma)

    def __call__(self, step: int) -> float:
        if self.kind == "step":
            return self.gamma ** math.floor(step / (self.steps_per_epoch * self.every))
        warm = self.warmup_end()
        if step < warm:
            return 0.04 + 0.96 * step / warm
        progress = self.decay_progress(step)
        if self.kind == "cosine":
            return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0 + (self.final - 1.0) * progress

    def follow(self, plan) -> None:
        """Take a run's plan (train.budget.Plan): its total steps, pass length, warm-up end and
        where a re-plan stretched the decay. Called when a run starts or resumes and at a re-plan."""
        self.total_steps, self.steps_per_epoch = plan.total_steps, plan.steps_per_epoch
        self.warmup_steps = plan.warmup_steps
        self.decay_resumed_at, self.decay_progress_then = plan.decay_resumed_at, plan.decay_progress_then

    def warmup_end(self) -> float:
        return self.warmup * self.total_steps if self.warmup_steps is None else self.warmup_steps

    def decay_progress(self, step: int) -> float:
        """How far the decay after warm-up is at `step`: 0 at its start, 1 at total_steps."""
        if self.decay_resumed_at is not None and step >= self.decay_resumed_at:
            start, done = self.decay_resumed_at, self.decay_progress_then
        else:
            start, done = self.warmup_end(), 0.0
        return min(1.0, max(0.0, done + (1.0 - done) * (step - start) / max(1.0, self.total_steps - start)))


# ------------------------------------------------------------------ precision
def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 arithmetic (AVX512-BF16 or AMX), where bf16
    autocast is faster than fp32; elsewhere it is emulated and slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None  # fp16 would need loss scaling
    return torch.bfloat16 if device.type == "cpu" and cpu_supports_bf16() else None
