"""Training recipes: one typed config, defaults from YAML files shipped in the package.

Resolution order (later wins): the `TrainConfig` defaults, the recipe's YAML
(recipes/<name>.yaml), a user's `--config FILE.yaml`, the common command-line flags
(--epochs, --lr, ...), and `--set key=value` overrides. Every key is checked: an
unknown one is a UserError that suggests the closest field. The resolved config is
saved with the run as config.yaml.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from ..errors import UserError, first_line

RECIPE_DIR = Path(__file__).parent / "recipes"
DEFAULT_RECIPE_BY_DATASET = {"fashion-mnist": "fmnist", "cifar10": "cifar", "cifar100": "cifar",
                             "imagefolder": "paper"}


@dataclass
class TrainConfig:
    """Every hyperparameter of a run, with its unit."""

    # What to train on what.
    recipe: str = "fmnist"
    model: str = "googlenet_cifar"
    dataset: str = "fashion-mnist"
    data: str | None = None  # folder with the dataset (None: the dataset's default places)
    weights: str | None = None  # start from a .safetensors file or "imagenet" (fine-tuning)
    freeze: str | None = None  # freeze the network up to and including this module, e.g. "4e"
    input_size: int | None = None  # pixels fed to the network (None: the data's own size)
    resize: int | None = None  # imagefolder evaluation: shorter side before the centre crop
    limit_train: int | None = None  # use the first N training images (quick runs, tests)
    limit_test: int | None = None  # evaluate on the first N test images

    # Schedule.
    epochs: int = 10  # passes over the training data (ignored with a budget)
    budget: str | None = None  # wall-clock budget ("10m", "90s", "1h"): the schedule is fitted to it
    batch_size: int = 128  # images per step per process
    accum_steps: int = 1  # micro-batches of batch_size per optimizer step (global batch = batch x procs x this)
    optimizer: str = "sgd"  # "sgd" (momentum, optional nesterov) | "adamw"
    lr: float = 0.1  # peak learning rate (per global batch of batch_size x processes)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # L2 on conv/linear weights (not on biases or norms)
    schedule: str = "onecycle"  # "onecycle" (linear warm-up, linear decay) | "cosine" | "step"
    warmup: float = 0.2  # share of all steps spent warming up (onecycle, cosine)
    final_lr_scale: float = 0.01  # lr at the last step, as a share of the peak
    step_every: float = 8.0  # "step": epochs between decays
    step_gamma: float = 0.96  # "step": factor per decay (the paper: -4% every 8 epochs)

    # Loss and regularisation.
    label_smoothing: float = 0.1
    aux_weight: float = 0.3  # weight of each auxiliary classifier's loss
    aux_logits: bool = True  # train with the auxiliary heads
    dropout: float = 0.4  # before the last linear layer
    dropout_aux: float = 0.7  # in the auxiliary heads
    ema: bool = True  # evaluate an exponential moving average of the weights (Polyak averaging)
    ema_decay: float = 0.999  # per step; early steps use a shorter average (warm-up)

    # Augmentation (small datasets run it batched on the device; imagefolder per image).
    crop_padding: int = 2  # pixels of padding before a random crop of the original size
    flip: bool = True  # random horizontal flip
    resized_crop_min_area: float = 0.0  # > 0: random resized crops of [min, 1] of the area
    random_interpolation: bool = False  # draw the resize interpolation at random
    photometric: float = 0.0  # brightness/contrast(/saturation) jitter strength
    erasing: float = 0.25  # probability of random erasing per image

    # Evaluation.
    eval_every: int = 1  # evaluate every N epochs (and always after the last)
    eval_subset: int | None = None  # per-epoch evaluation on the first N test images (None: all)
    tta_flip: bool = False  # final evaluation also averages with the mirrored images

    # Machine.
    device: str = "auto"  # auto | cpu | cuda[:N]
    precision: str = "auto"  # auto (bf16 on CUDA and on CPUs with bf16 support) | bf16 | fp32
    channels_last: bool = True
    compile: bool = False  # torch.compile the model
    cuda_graph: bool = True  # one GPU, one process: replay each step's forward and backward as CUDA graphs
    workers: int = 4  # imagefolder DataLoader workers
    sync_bn: bool = False  # several processes: batch-norm statistics over the global batch (SyncBatchNorm)
    dist_timeout: float = 120.0  # seconds a collective waits for the other processes before the job fails
    seed: int = 0
    tensorboard: bool = False
    on_nan: str = "stop"  # a NaN/Inf loss: "stop" the run (the last checkpoint kept) | "skip" that step's update

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def budget_seconds(self) -> float | None:
        return parse_duration(self.budget) if self.budget else None


FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))
_TYPES = get_type_hints(TrainConfig)


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*")  # a number, then an optional unit


def parse_duration(text: str | float | int) -> float:
    """'10m' -> 600.0; accepts s, m, h and plain seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    match = DURATION.fullmatch(str(text))
    if (match and float(match.group(1)) <= 0) or str(text).strip().startswith("-"):
        raise UserError(f"the duration must be positive, not {text!r}; write e.g. 90s, 10m or 1.5h")
    if not match:
        raise UserError(f"cannot read the duration {text!r}; write e.g. 90s, 10m or 1.5h")
    unit = {"s": 1, "sec": 1, None: 1, "m": 60, "min": 60, "h": 3600}[match.group(2)]
    return float(match.group(1)) * unit


def duration_label(text: str | float | int) -> str:
    """A duration as the user wrote it, with its unit: a bare number means seconds ("10" -> "10s")."""
    label = str(text).strip()
    match = DURATION.fullmatch(label)
    return f"{label}s" if match and match.group(2) is None else label


def _coerce(key: str, value: Any) -> Any:
    """Check `value` against the field's type; ints become floats where floats are expected."""
    hint = _TYPES[key]
    allowed = get_args(hint) if get_origin(hint) is not None else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise UserError(f"{key} cannot be empty")
    for kind in allowed:
        if kind is type(None):
            continue
        if kind is bool:
            if isinstance(value, bool):
                return value
            continue
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    names = " or ".join(getattr(k, "__name__", str(k)) for k in allowed)
    raise UserError(f"{key} must be {names}, got {value!r}")


# Names other tools use, where spelling alone suggests a wrong key (learning_rate -> 'erasing').
SYNONYMS = {"learning_rate": "lr", "bs": "batch_size", "wd": "weight_decay", "amp": "precision",
            "image_size": "input_size", "opt": "optimizer", "num_workers": "workers"}
FLAGS_NOT_KEYS = ("out", "resume", "config", "nproc")  # what the run is, not how it trains


def check_key(key: str, source: str) -> None:
    if key in FLAGS_NOT_KEYS:
        raise UserError(f"{key!r} in {source} is not a config key; use the flag --{key}")
    if key == "num_classes":
        raise UserError(f"num_classes in {source} is not a config key: the classes come from the dataset "
                        "(an image folder's class folders)")
    if key not in FIELD_NAMES:
        close = ([SYNONYMS[key]] if key in SYNONYMS else None) or difflib.get_close_matches(
            key, FIELD_NAMES, n=1, cutoff=0.5) or [
            f for f in FIELD_NAMES if key.startswith(f + "_") or f.startswith(key)][:1]
        hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(FIELD_NAMES)}"
        raise UserError(f"unknown config key {key!r} in {source}{hint}")


def apply(config: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    """A copy of `config` with `values` applied (keys and types checked)."""
    updates = {}
    for key, value in values.items():
        check_key(key, source)
        updates[key] = _coerce(key, value)
    return dataclasses.replace(config, **updates)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--config {path} is a folder; give a YAML file of config keys (e.g. a run's config.yaml)")
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file; --config takes a YAML file of config keys") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or first_line(e)}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML ({first_line(e)})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} must hold a mapping of key: value lines")
    return values


def load_recipe(name: str) -> TrainConfig:
    path = RECIPE_DIR / f"{name}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(name, list_recipes(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown recipe {name!r}{hint}; choose from {', '.join(list_recipes())}")
    return apply(TrainConfig(), {"recipe": name, **read_yaml(path)}, f"recipe {name}")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """['lr=0.1', 'budget=5m'] -> {'lr': 0.1, 'budget': '5m'} (values read as YAML scalars)."""
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set takes key=value, got {pair!r}")
        key = key.strip().replace("-", "_")
        check_key(key, "--set")
        try:
            values[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            values[key] = raw
        hint = _TYPES[key]
        if str in (get_args(hint) or (hint,)) and values[key] is not None and not isinstance(values[key], bool):
            values[key] = raw.strip()  # keep strings verbatim ("1e3" stays a name, not a number)
    return values


def resolve_config(recipe: str | None = None, config_file: str | None = None,
                   flags: dict[str, Any] | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """The run's config: recipe YAML < --config file < flags < --set overrides.

    Without a recipe, the dataset picks one (fashion-mnist: fmnist, cifar: cifar,
    imagefolder: finetune when starting from weights, else paper).
    """
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    file_values = read_yaml(config_file) if config_file else {}
    set_values = parse_overrides(overrides or [])
    if recipe is None:
        recipe = set_values.get("recipe") or file_values.get("recipe")
    if recipe is None:
        dataset = set_values.get("dataset") or flags.get("dataset") or file_values.get("dataset") or "fashion-mnist"
        weights = set_values.get("weights") or flags.get("weights") or file_values.get("weights")
        recipe = "finetune" if dataset == "imagefolder" and weights else DEFAULT_RECIPE_BY_DATASET.get(dataset, "fmnist")
    config = load_recipe(str(recipe))
    config = apply(config, file_values, str(config_file))
    config = apply(config, flags, "the command line")
    config = apply(config, set_values, "--set")
    validate(config)
    _epochs_or_budget(config, flags, set_values, config_file)
    return config


def _epochs_or_budget(config: TrainConfig, flags: dict[str, Any], set_values: dict[str, Any],
                      config_file: str | None) -> None:
    """Epochs asked for (a flag or --set) with a budget: the budget picks the epochs itself,
    so the epochs would be dropped without a word. One line instead."""
    epochs = set_values.get("epochs", flags.get("epochs"))
    if config.budget is None or epochs is None:
        return
    if "budget" not in flags and "budget" not in set_values:  # it came from the --config file
        raise UserError(f"--epochs {epochs} and the budget: {config.budget} of {config_file} both set how long the "
                        "run is; drop the budget with --set budget= to train for the epochs")
    raise UserError(f"--epochs {epochs} and --budget {config.budget} both set how long the run is, and the "
                    "budget picks the epochs itself; give one of them")


def validate(config: TrainConfig) -> None:
    choices = {"optimizer": ("sgd", "adamw"), "schedule": ("onecycle", "cosine", "step"),
               "precision": ("auto", "bf16", "fp32"), "on_nan": ("stop", "skip")}
    for key, allowed in choices.items():
        if getattr(config, key) not in allowed:
            raise UserError(f"{key} must be one of {', '.join(allowed)}, got {getattr(config, key)!r}")
    for key in ("epochs", "batch_size", "eval_every", "accum_steps", "lr", "step_gamma", "step_every",
                "dist_timeout"):
        value = getattr(config, key)
        if not (math.isfinite(value) and value > 0):  # nan slips past `<= 0`
            raise UserError(f"{key} must be positive, got {value}")
    for key in ("limit_train", "limit_test", "input_size", "resize", "eval_subset"):  # None: not set
        value = getattr(config, key)
        if value is not None and value <= 0:
            raise UserError(f"{key} must be a positive number (or left unset), got {value}")
    if config.workers < 0:
        raise UserError(f"workers must be 0 or more, got {config.workers}")
    for key in ("dropout", "dropout_aux", "label_smoothing", "erasing", "warmup", "resized_crop_min_area",
                "momentum", "ema_decay", "final_lr_scale"):
        value = getattr(config, key)
        if not 0 <= value <= 1:  # nan fails this too
            raise UserError(f"{key} is a fraction between 0 and 1, got {value}")
    for key in ("weight_decay", "photometric", "aux_weight", "crop_padding"):
        value = getattr(config, key)
        if not (math.isfinite(value) and value >= 0):
            raise UserError(f"{key} must be 0 or more, got {value}")
    if config.budget is not None:
        parse_duration(config.budget)
    from ..models import model_variant  # here, not at the top: the models import torch

    model_variant(config.model)  # an unknown name is one line now, not after the data has loaded


def save_config(config: TrainConfig, path: str | Path) -> None:
    from ..fileio import atomic_write

    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a saved config (e.g. from a checkpoint), ignoring keys a newer version dropped."""
    known = {k: v for k, v in values.items() if k in FIELD_NAMES}
    return TrainConfig(**known)


__all__ = ["TrainConfig", "list_recipes", "load_recipe", "resolve_config", "save_config",
           "config_from_dict", "parse_duration"]
