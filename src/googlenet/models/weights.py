"""Weights files: safetensors with metadata enough to rebuild the model alone.

Metadata keys (each value JSON-encoded): "model" (registered name), "options"
(create_model options), and whatever the caller adds: "class_names", "input_size",
"mean", "std", ... `load_weights(path)` returns the model with `model.meta` set.
"""
from __future__ import annotations

import json
import os
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from ..errors import UserError, first_line
from ..fileio import atomic_write, load_error_reason

FORMAT = "googlenet-weights/1"
# ImageNet's per-channel statistics in [0, 1] pixel units: torchvision's weights, image folders, RGB predict defaults
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# What a `googlenet train` run folder holds once finished, and its checkpoint until then
# (train.checkpoint takes its names from here: the models package does not import training).
RUN_WEIGHTS = "model.safetensors"
RUN_CHECKPOINT = "last.pt"


class WeightsError(UserError):
    """A weights file that is missing, unreadable or of another architecture."""


def save_weights(model: nn.Module, path: str | os.PathLike, **meta) -> Path:
    """Write the model's state_dict and metadata (class_names, input_size, mean, std...)."""
    name = getattr(model, "model_name", None)
    if name is None:
        raise ValueError("save_weights needs a model made by create_model")
    header = {"format": FORMAT, "model": name, "options": model.model_options}
    header.update(getattr(model, "meta", {}) or {})
    header.update(meta)
    encoded = {k: json.dumps(v) for k, v in header.items()}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=encoded))


def read_metadata(path: str | os.PathLike) -> dict:
    """The decoded metadata of a weights file or run folder (raises WeightsError if it is not one)."""
    path = weights_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(_not_weights_message(path, e)) from None
    try:
        meta = {k: json.loads(v) for k, v in raw.items()}
    except json.JSONDecodeError:
        meta = {}
    if meta.get("format") != FORMAT or "model" not in meta:
        raise WeightsError(f"{path}: a safetensors file, but not one written by googlenet "
                           "(no model metadata); convert torchvision checkpoints with "
                           "`googlenet import-torchvision FILE.pth OUT.safetensors`")
    return meta


def load_weights(path: str | os.PathLike, map_location: str | torch.device = "cpu", **overrides) -> nn.Module:
    """Rebuild the model a weights file (or a finished run folder) describes and load its tensors (strictly)."""
    from .registry import create_model

    path = weights_file(path)
    meta = read_metadata(path)
    options = {**meta.get("options", {}), **overrides}
    model = create_model(meta["model"], **options)
    load_state_into(model, path)
    model.meta = {k: v for k, v in meta.items() if k not in ("format", "model", "options")}
    return model.to(map_location)


def load_state_into(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a safetensors state_dict into `model`; a mismatch names keys and shapes."""
    path = weights_file(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(_not_weights_message(path, e)) from None
    load_state_dict_checked(model, state, str(path))


def load_state_dict_checked(model: nn.Module, state: dict, source: str) -> None:
    """load_state_dict(strict) with a one-line error; aux-head keys are dropped when the
    model has no aux heads (as torchvision does for its published weights)."""
    own = model.state_dict()
    if not getattr(model, "aux_logits", True):
        state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
    # Trunk and classifier first: a wrong class count shows as fc.* before the aux heads.
    own = dict(sorted(own.items(), key=lambda kv: kv[0].startswith(("aux1.", "aux2."))))
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es), e.g. {', '.join(wrong[:3])} (file vs model)")
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}")
        name = getattr(model, "model_name", type(model).__name__)
        raise WeightsError(f"{source} does not fit {name}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def weights_file(path: str | os.PathLike) -> Path:
    """The weights file `path` names: the file itself, or a finished run folder's model.safetensors
    (`googlenet eval runs/x` means runs/x/model.safetensors). WeightsError if there is none."""
    path = Path(path)
    if path.is_dir():
        weights = path / RUN_WEIGHTS
        if weights.is_file():
            return weights
        if (path / RUN_CHECKPOINT).is_file():
            raise WeightsError(f"{path} is a folder, not a weights file, and its run has not finished "
                               f"(no {RUN_WEIGHTS} yet); resume it with `googlenet train --resume {path}`")
        if (path / "config.yaml").is_file():  # a run's first file: it stopped before its first checkpoint
            raise WeightsError(f"{path} is a run that stopped before its first checkpoint: it has no weights; start "
                               f"it again with `googlenet train --config {path / 'config.yaml'} --out {path}`")
        raise WeightsError(f"{path} is a folder, not a weights file; expected {weights}, "
                           "which a finished `googlenet train` run writes")
    return _existing(path)


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    return path


def _not_weights_message(path: Path, error: Exception) -> str:
    from ..images import FOLDER_IMAGE_SUFFIXES

    other_output = _other_output_message(path)
    if other_output:
        return other_output
    if path.suffix.lower() in FOLDER_IMAGE_SUFFIXES:  # `predict shoe.png model.safetensors`
        return (f"{path} is an image, not a weights file; were the arguments swapped? "
                "(predict takes WEIGHTS first, then the images)")
    if path.suffix.lower() in TEXT_SUFFIXES:  # config.yaml, metrics.csv, an ncnn export's .json
        run_weights = path.parent / RUN_WEIGHTS
        return (f"{path} is a text file, not weights"
                + (f"; this run's weights are {run_weights}" if run_weights.is_file() else ""))
    hint = ""
    if path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        hint = "; for a torchvision checkpoint run `googlenet import-torchvision FILE.pth OUT.safetensors`"
    return f"{path} is not a safetensors weights file ({first_line(error)}){hint}"


TEXT_SUFFIXES = (".yaml", ".yml", ".json", ".csv", ".txt", ".log", ".md")
# What an export given as weights is told; predict/eval, which also run exports, say more instead.
TAKES_WEIGHTS = "this command takes .safetensors weights (the file it was exported from)"


def _other_output_message(path: Path) -> str | None:
    """The error for a file that is one of googlenet's other outputs given where weights go: the
    generic "not a safetensors file" would send a user with a run's checkpoint to import-torchvision."""
    if path.suffix.lower() == ".onnx":
        return f"{path} is already an ONNX export; {TAKES_WEIGHTS}"
    if path.suffix.lower() == ".param" or (path.suffix.lower() == ".bin" and path.with_suffix(".param").is_file()):
        return f"{path} is part of an ncnn export; {TAKES_WEIGHTS}"
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        else:
            names = []
    except (OSError, zipfile.BadZipFile):
        return None
    if any(name.endswith("extra/googlenet_meta.json") for name in names):  # export.TORCHSCRIPT_META_FILE
        return f"{path} is a TorchScript export (for C++/mobile deployment); {TAKES_WEIGHTS}"
    if any(name.endswith("data.pkl") for name in names) and _is_training_checkpoint(path):
        weights = path.parent / RUN_WEIGHTS
        if weights.is_file():
            return f"{path} is a training checkpoint, not a weights file; use the run's weights: {weights}"
        return (f"{path} is a training checkpoint of a run that has not finished (no {weights} yet); "
                f"resume it with `googlenet train --resume {path.parent}`")
    return None


def is_checkpoint_payload(payload: object) -> bool:
    """Whether a loaded object is what train.checkpoint writes: the model's state and the run's
    config (and more) in one dict. Here, not in train/, so that models need not import train."""
    return isinstance(payload, dict) and "model" in payload and "config" in payload


def _is_training_checkpoint(path: Path) -> bool:
    """Whether `path` holds what train.checkpoint.load_checkpoint accepts. mmap: the tensors are
    not read, so a 100 MB checkpoint costs little; weights_only: a planted pickle runs no code."""
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # refused or unreadable: not a checkpoint googlenet wrote
        return False
    return is_checkpoint_payload(payload)


# How the files torch.save writes begin: a zip archive (the default) or, in the legacy format,
# a pickle (protocol 2 by default; 3-5 with pickle_protocol=). Anything else was not written by it.
_TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


class TorchLoadError(Exception):
    """torch.load(weights_only=True) failed: `reason` in words for a one-line error, and
    whether the file is one torch.save wrote at all (a PNG given as a checkpoint is not)."""

    def __init__(self, reason: str, written_by_torch_save: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.written_by_torch_save = written_by_torch_save


def torch_load_weights_only(path: str | os.PathLike):
    """torch.load(path, weights_only=True) onto the CPU (no code in the file can run), or TorchLoadError.

    "It holds pickled Python objects" (fileio.load_error_reason) is kept for refusals of what a
    pickle names: torch reports an image or a text file as an unpickling failure too, which that
    wording would make look like a planted exploit. Such files are told apart by their first
    bytes before torch.load (which would also print a warning about pickle protocols for them).
    """
    not_torch_save = TorchLoadError("not a file torch.save wrote", written_by_torch_save=False)
    try:
        with open(path, "rb") as f:
            head = f.read(len(_TORCH_SAVE_MAGIC[0]))
    except OSError:
        head = _TORCH_SAVE_MAGIC[0]  # let torch.load report the OSError
    if not head:
        raise TorchLoadError("the file is empty", written_by_torch_save=False)
    if not head.startswith(_TORCH_SAVE_MAGIC):
        raise not_torch_save
    try:
        with warnings.catch_warnings():
            # "Detected pickle protocol 4 ...": a second stderr line that is torch's own business.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, RuntimeError, EOFError, ...
        raise TorchLoadError(load_error_reason(e), written_by_torch_save=True) from None


# ------------------------------------------------------------------ torchvision
def _torchvision_categories() -> list[str]:
    from torchvision.models import GoogLeNet_Weights

    return list(GoogLeNet_Weights.IMAGENET1K_V1.meta["categories"])


def _tv_state_to_model(state: dict, source: str, transform_input: bool | None = None, **options) -> nn.Module:
    from .registry import create_model

    if not isinstance(state, dict) or "fc.weight" not in state:
        raise WeightsError(f"{source}: not a GoogLeNet state_dict (no 'fc.weight' key)")
    num_classes = int(state["fc.weight"].shape[0])
    has_aux = any(k.startswith("aux1.") for k in state)
    if transform_input is None:
        # torchvision's published ImageNet weights expect transform_input=True.
        transform_input = num_classes == 1000
    options = {"num_classes": num_classes, "aux_logits": has_aux, "transform_input": transform_input, **options}
    model = create_model("googlenet_tv", **options)
    load_state_dict_checked(model, state, source)
    model.meta = {"input_size": 224, "resize": 256, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    if num_classes == 1000:
        model.meta["class_names"] = _torchvision_categories()
    return model


def read_torch_checkpoint(path: str | os.PathLike) -> dict:
    """torch.load with weights_only=True (no code runs); unwraps {'state_dict': ...}."""
    path = _existing(path)
    try:
        obj = torch_load_weights_only(path)
    except TorchLoadError as e:
        raise WeightsError(f"{path}: cannot be read as a PyTorch checkpoint with weights_only=True "
                           f"({e.reason})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def import_torchvision(pth: str | os.PathLike, out: str | os.PathLike, transform_input: bool | None = None) -> Path:
    """Convert a torchvision GoogLeNet .pth state_dict into a googlenet_tv weights file."""
    if _is_training_checkpoint(_existing(pth)):  # ours: the shape mismatches would not say so
        weights = Path(pth).parent / RUN_WEIGHTS
        raise WeightsError(f"{pth} is a googlenet training checkpoint, not a torchvision one; nothing to import"
                           + (f": its run's weights are {weights}" if weights.is_file() else
                              f" (its run has not finished: `googlenet train --resume {Path(pth).parent}`)"))
    state = read_torch_checkpoint(pth)
    model = _tv_state_to_model(state, str(pth), transform_input)
    return save_weights(model, out)


IMAGENET_FILE = "googlenet-1378be20.pth"


def imagenet_model(name: str, **options) -> nn.Module:
    """googlenet_tv with torchvision's published ImageNet weights, through torchvision's
    weights API (downloaded once, hash-checked, cached under $TORCH_HOME)."""
    if name != "googlenet_tv":
        raise UserError(f"weights='imagenet' exists for googlenet_tv only (torchvision's weights), not {name}")
    from torchvision.models import GoogLeNet_Weights

    entry = GoogLeNet_Weights.IMAGENET1K_V1
    try:
        state = entry.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; hash mismatch a RuntimeError
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise WeightsError(
            f"could not fetch torchvision's ImageNet weights ({type(e).__name__}); offline, download "
            f"{entry.url} elsewhere and either copy it to {cache / IMAGENET_FILE} or run "
            f"`googlenet import-torchvision {IMAGENET_FILE} googlenet_tv_imagenet.safetensors`") from None
    requested_aux = options.pop("aux_logits", False)
    model = _tv_state_to_model(state, entry.url, transform_input=options.pop("transform_input", True), **options)
    if not requested_aux:
        model.drop_aux()
    return model
