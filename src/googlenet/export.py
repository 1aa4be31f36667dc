"""Export the inference network (aux heads dropped, eval mode) to ONNX, TorchScript or ncnn.

The preprocessing a deployment needs (input size, resize, mean, std, class names) travels
inside the file: ONNX metadata_props (read back by `googlenet.onnx_backend.OnnxClassifier`)
or a TorchScript extra file (read back by `load_torchscript`); an ncnn export is three files,
NAME.param, NAME.bin and NAME.json with the metadata (read back by `load_ncnn_export`). Every ONNX export is checked
with onnx.checker and run once with onnxruntime against PyTorch before it is kept.

ONNX goes through torch's TorchScript-based exporter (`dynamo=False`): offline it honours
the requested opset exactly (13-20) and exports in seconds; the torch.export-based one
(`dynamo=True`, needs onnxscript) starts at opset 18 and is kept as an option.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import RunError, UserError, first_line, output_errors
from .fileio import atomic_write
from .onnx_backend import ONNX_META_FORMAT, REQUIRED_META, encode_metadata

FORMATS = ("onnx", "torchscript", "ncnn")
DEFAULT_OPSET = 17
# Per-channel int8 (QDQ with an axis) needs opset 13; so do the ops we use in their modern form.
MIN_OPSET = 13
MAX_OPSET_TORCHSCRIPT_EXPORTER = 20
MIN_OPSET_DYNAMO_EXPORTER = 18
TORCHSCRIPT_META_FORMAT = "googlenet-torchscript/1"
TORCHSCRIPT_META_FILE = "googlenet_meta.json"
NCNN_META_FORMAT = "googlenet-ncnn/1"
# onnxruntime vs PyTorch on the same fp32 input, relative to the logits' scale.
ONNX_TOLERANCE = 1e-4


# ------------------------------------------------------------------ the network
def inference_network(model: nn.Module) -> nn.Module:
    """A copy of `model` with the aux heads removed, in eval mode, on the CPU."""
    net = copy.deepcopy(model).cpu()
    if hasattr(net, "drop_aux"):
        net.drop_aux()  # also records aux_logits=False in model_options
    return net.eval()


def export_metadata(model: nn.Module, **extra) -> dict:
    """Preprocessing and identity of the network, complete (missing keys get predict's defaults)."""
    from .predict import complete_meta

    native = getattr(getattr(model, "variant", None), "input_size", 224)
    meta = complete_meta(getattr(model, "meta", {}) or {}, model.num_classes, model.in_chans, native)
    meta.setdefault("dataset", "")
    meta.update(model=getattr(model, "model_name", type(model).__name__),
                options=getattr(model, "model_options", {}), **extra)
    return meta


def example_input(meta: dict, batch: int = 1) -> torch.Tensor:
    """Random non-zero input of the exported shape (values are irrelevant to the graph)."""
    size = int(meta["input_size"])
    return torch.rand(batch, int(meta["in_chans"]), size, size) + 0.1


# ------------------------------------------------------------------ ONNX
def check_opset(opset: int, dynamo: bool = False) -> None:
    low = MIN_OPSET_DYNAMO_EXPORTER if dynamo else MIN_OPSET
    high = _dynamo_max_opset() if dynamo else MAX_OPSET_TORCHSCRIPT_EXPORTER
    if opset < low:
        raise UserError(f"--opset {opset} is too old: GoogLeNet exports at opset {low}-{high} "
                        f"(default {DEFAULT_OPSET}); pass --opset {max(low, DEFAULT_OPSET)}")
    if opset > high:
        raise UserError(f"--opset {opset} is newer than this torch can write ({low}-{high}); "
                        f"pass --opset {high} or lower")


def _dynamo_max_opset() -> int:
    constants = getattr(torch.onnx, "_constants", None)  # private: may move between releases
    return int(getattr(constants, "ONNX_MAX_OPSET", MIN_OPSET_DYNAMO_EXPORTER))


def export_onnx(model: nn.Module, out: str | os.PathLike, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = False, dynamo: bool = False, verify: bool = True,
                meta: dict | None = None) -> Path:
    """Write `model`'s inference network as ONNX with metadata_props; check and verify it.

    dynamic_batch: the batch dimension is symbolic ("batch"); otherwise it is 1.
    verify: run the file with onnxruntime and compare with PyTorch (RunError beyond tolerance).
    """
    import onnx

    check_opset(opset, dynamo)
    net = inference_network(model)
    meta = meta if meta is not None else export_metadata(net)
    meta = {**meta, "format": ONNX_META_FORMAT, "opset": opset, "dynamic_batch": dynamic_batch,
            "int8": bool(meta.get("int8", False))}
    x = example_input(meta)

    def write(tmp: str) -> None:
        _torch_onnx_export(net, x, tmp, opset, dynamic_batch, dynamo)
        proto = onnx.load(tmp)
        set_metadata(proto, meta)
        proto.doc_string = f"GoogLeNet {meta['model']} inference network, exported by googlenet"
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, tmp)
        if verify:  # before the rename: a file that computes something else never replaces `out`
            verify_onnx(tmp, net, batches=(1, 3) if dynamic_batch else (1,), shown_as=out)

    return atomic_write(out, write)


def open_in_onnxruntime(model: nn.Module, dynamic_batch: bool = True, meta: dict | None = None,
                        threads: int | None = None):
    """`model` exported (and verified) as `export_onnx` writes it, into a temporary folder, and
    opened in an onnxruntime session, which keeps the graph in memory: an OnnxClassifier."""
    from .onnx_backend import OnnxClassifier

    with tempfile.TemporaryDirectory(prefix="googlenet-onnx-") as folder:
        path = export_onnx(model, Path(folder) / "model.onnx", dynamic_batch=dynamic_batch, meta=meta)
        return OnnxClassifier(path, threads=threads)


def _torch_onnx_export(net: nn.Module, x: torch.Tensor, path: str, opset: int,
                       dynamic_batch: bool, dynamo: bool) -> None:
    kwargs: dict = dict(input_names=["input"], output_names=["logits"], opset_version=opset, dynamo=dynamo)
    if dynamo:
        kwargs.update(external_data=False, verbose=False)
        if dynamic_batch:
            kwargs["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch")}}
    else:
        kwargs["do_constant_folding"] = True  # folds batch norm into the convolutions
        if dynamic_batch:
            kwargs["dynamic_axes"] = {"input": {0: "batch"}, "logits": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript-based exporter is deprecated in favour of dynamo but still the
        # one that writes any opset from 13; its DeprecationWarning is noise for users.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.onnx.export(net, (x,), path, **kwargs)


def set_metadata(proto, meta: dict) -> None:
    """Replace the model's metadata_props with `meta` (values JSON-encoded)."""
    del proto.metadata_props[:]
    for key, value in encode_metadata(meta).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def scaled_difference(got: torch.Tensor, net: nn.Module, x: torch.Tensor) -> float:
    """max |got - net(x)|, over the logits' scale (at least 1): how far an export strays."""
    with torch.no_grad():
        expected = net(x)
    return (got - expected).abs().max().item() / max(1.0, expected.abs().max().item())


def verify_onnx(path: str | os.PathLike, net: nn.Module, batches: tuple[int, ...] = (1,),
                tolerance: float = ONNX_TOLERANCE, shown_as: str | os.PathLike | None = None) -> float:
    """Largest |onnxruntime - PyTorch| over random batches, scaled by the logits' size;
    RunError (naming `shown_as`, default `path`) when it exceeds `tolerance`. Returns the
    worst scaled difference."""
    from .onnx_backend import OnnxClassifier

    runtime = OnnxClassifier(path, threads=1)  # a few small batches: one thread is enough
    worst = 0.0
    for batch in batches:
        x = example_input(runtime.meta, batch)
        worst = max(worst, scaled_difference(runtime(x), net, x))
    if worst > tolerance:
        raise RunError(f"{shown_as or path}: onnxruntime differs from PyTorch by {worst:.2e} (> {tolerance:.0e}); "
                       "try another --opset")
    return worst


# ------------------------------------------------------------------ TorchScript
def export_torchscript(model: nn.Module, out: str | os.PathLike, method: str = "script",
                       meta: dict | None = None) -> Path:
    """Write the inference network as TorchScript (`method` "script" or "trace"), with the
    metadata as the extra file googlenet_meta.json."""
    if method not in ("script", "trace"):
        raise ValueError(f"method must be 'script' or 'trace', not {method!r}")
    net = inference_network(model)
    meta = meta if meta is not None else export_metadata(net)
    meta = {**meta, "format": TORCHSCRIPT_META_FORMAT, "method": method}
    extra = {TORCHSCRIPT_META_FILE: json.dumps(meta)}
    with warnings.catch_warnings(), torch.no_grad():
        # torch.jit is "deprecated" in favour of torch.export, yet it is what C++/mobile
        # deployments load; the warning is noise for the user here.
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        if method == "script":
            compiled = torch.jit.script(net)
        else:
            compiled = torch.jit.trace(net, example_input(meta))
        return atomic_write(out, lambda tmp: torch.jit.save(compiled, tmp, _extra_files=extra))


def load_torchscript(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, dict]:
    """The TorchScript module and its metadata (UserError if the file is not our export)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"TorchScript file not found: {path}")
    extra = {TORCHSCRIPT_META_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as e:  # RuntimeError from the zip/archive reader
        raise UserError(f"{path} is not a TorchScript file ({first_line(e, 200)})") from None
    try:
        meta = json.loads(extra[TORCHSCRIPT_META_FILE] or "{}")
    except json.JSONDecodeError:
        meta = {}
    if meta.get("format") != TORCHSCRIPT_META_FORMAT:
        raise UserError(f"{path}: TorchScript, but not exported by googlenet (no {TORCHSCRIPT_META_FILE})")
    return module.eval(), meta


def ncnn_files(param: str | os.PathLike) -> tuple[Path, Path, Path]:
    """The three files of an ncnn export: NAME.param, NAME.bin (weights), NAME.json (metadata)."""
    param = Path(param)
    return param, param.with_suffix(".bin"), param.with_suffix(".json")


def _ncnn_meta(path: Path) -> dict | None:
    """The metadata in `path` if it is a googlenet ncnn export's .json, else None."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == NCNN_META_FORMAT else None


def check_ncnn_out(out: str | os.PathLike, weights: str | os.PathLike | None = None) -> None:
    """The three files of an ncnn export are NAME.param, NAME.bin and NAME.json: refuse an --out
    without the .param suffix, one that would overwrite the weights being exported, and a .bin
    or .json already there that is not part of an earlier googlenet ncnn export."""
    param, bin_file, meta_file = ncnn_files(out)
    if param.suffix.lower() != ".param":
        raise UserError(f"--out {out}: an ncnn export is NAME.param (with NAME.bin and NAME.json beside "
                        "it); end --out in .param")
    if weights is not None and Path(weights).resolve() in {f.resolve() for f in (param, bin_file, meta_file)}:
        raise UserError(f"--out {out} would overwrite the weights file {weights} (an ncnn export writes "
                        f"{bin_file.name} and {meta_file.name} too); choose another name")
    earlier_export = _ncnn_meta(meta_file) is not None
    for path in (bin_file, meta_file):
        if path.exists() and not earlier_export:
            raise UserError(f"{path} exists and is not part of a googlenet ncnn export; choose another --out "
                            "(an ncnn export writes NAME.param, NAME.bin and NAME.json)")


def export_ncnn(model: nn.Module, out: str | os.PathLike, meta: dict | None = None,
                weights: str | os.PathLike | None = None) -> Path:
    """Write the inference network for ncnn (`out` is the .param file; its .bin and .json are
    written beside it), converted as `optimize(backend="ncnn")` converts it, and check the
    written files against PyTorch (within ONNX_TOLERANCE of the logits' scale) before keeping them.
    `weights`, the file the model came from, is never overwritten (check_ncnn_out)."""
    import shutil

    from .ncnn_backend import NcnnEngine, convert_for_ncnn, require_ncnn

    try:
        require_ncnn()
    except ImportError as e:
        raise UserError(f"--format ncnn: {e}") from None
    check_ncnn_out(out, weights)
    net = inference_network(model)
    meta = {**(meta if meta is not None else export_metadata(net)), "format": NCNN_META_FORMAT}
    x = example_input(meta)
    param_out, weights_out, meta_out = ncnn_files(out)
    with tempfile.TemporaryDirectory(prefix="googlenet-export-") as tmp:
        try:
            param, weights, _ = convert_for_ncnn(net, tuple(x.shape), tmp)
            engine = NcnnEngine.load(param, weights, tuple(x.shape), int(meta["num_classes"]))
        except (RuntimeError, OSError) as e:
            raise RunError(f"could not convert the model for ncnn: {first_line(e)}") from None
        diff = scaled_difference(engine(x), net, x)
        if diff > ONNX_TOLERANCE:
            raise RunError(f"the ncnn conversion differs from PyTorch by {diff:.2e} of the logits' scale "
                           f"(> {ONNX_TOLERANCE:.0e}); not written")
        # An earlier export's .param goes first and the new one comes last: a crash in between
        # leaves an incomplete export (refused by load_ncnn_export), never old graph + new weights.
        param_out.unlink(missing_ok=True)
        with output_errors(weights_out):  # a failure names the file that failed, not only the .param
            atomic_write(weights_out, lambda tmp_path: shutil.copyfile(weights, tmp_path))
        with output_errors(meta_out):
            atomic_write(meta_out, lambda tmp_path: Path(tmp_path).write_text(json.dumps(meta, indent=1)))
        return atomic_write(param_out, lambda tmp_path: shutil.copyfile(param, tmp_path))


def load_ncnn_export(param: str | os.PathLike) -> tuple[Path, Path, dict]:
    """(param, weights, metadata) of an ncnn export, or a one-line UserError naming what is wrong."""
    param, weights, meta_file = ncnn_files(param)
    for path in (param, weights, meta_file):
        if not path.is_file():
            raise UserError(f"ncnn export incomplete: {path} not found (an export is NAME.param, NAME.bin "
                            "and NAME.json; make one with `googlenet export WEIGHTS --format ncnn`)")
    meta = _ncnn_meta(meta_file)
    again = "export it again with `googlenet export WEIGHTS --format ncnn`"
    if meta is None:
        raise UserError(f"{meta_file}: not the metadata of a googlenet ncnn export; {again}")
    missing = [k for k in (*REQUIRED_META, "num_classes") if k not in meta]
    if missing:
        raise UserError(f"{meta_file}: metadata lacks {', '.join(missing)}; {again}")
    with open(param, "rb") as f:  # checked here: ncnn itself would print its own lines to stderr
        if f.readline().strip() != b"7767517":
            raise UserError(f"{param}: not an ncnn .param file; {again}")
    return param, weights, meta


# ------------------------------------------------------------------ the command
def default_output(weights: str | os.PathLike, fmt: str, int8: bool) -> Path:
    stem = Path(weights).with_suffix("")
    suffix = {"onnx": ".int8.onnx" if int8 else ".onnx", "torchscript": ".torchscript.pt",
              "ncnn": ".ncnn.param"}[fmt]
    return stem.with_name(stem.name + suffix)


def export(weights: str | os.PathLike, format: str = "onnx", out: str | os.PathLike | None = None,
           int8: bool = False, dynamic_batch: bool = False, opset: int = DEFAULT_OPSET,
           calib_dataset: str | None = None, calib_images: int = 300, data_dir: str | None = None,
           dynamo: bool = False, progress: bool = False) -> Path:
    """`googlenet export`: load a weights file (safetensors only, no code runs; a finished run
    folder means its model.safetensors) and write the inference network in `format`. int8:
    static quantization for CPU (ONNX only), calibrated on `calib_images` training images of
    the weights' dataset (or `calib_dataset`; "random" uses noise, for plumbing tests only)."""
    from .models.weights import load_weights, read_metadata, weights_file

    if format not in FORMATS:
        raise UserError(f"unknown format {format!r}; choose from {', '.join(FORMATS)}")
    if int8 and format != "onnx":
        raise UserError("--int8 needs --format onnx (int8 runs through onnxruntime's CPU kernels)")
    if format == "onnx":
        check_opset(opset, dynamo)
    weights = weights_file(weights)  # a finished run folder means its model.safetensors
    # Checked before an output name is made from it: an ONNX file given as WEIGHTS would
    # otherwise be reported as an --out about to overwrite it.
    read_metadata(weights)
    out = Path(out) if out is not None else default_output(weights, format, int8)
    if out.resolve() == Path(weights).resolve():
        raise UserError(f"--out {out} would overwrite the weights file; choose another name")
    model = load_weights(weights)  # WeightsError (a UserError) for anything that is not ours
    with output_errors(out):  # an --out that cannot be written: one line, not a traceback
        if format == "torchscript":
            return export_torchscript(model, out)
        if format == "ncnn":
            return export_ncnn(model, out, weights=weights)
        if not int8:
            return export_onnx(model, out, opset=opset, dynamic_batch=dynamic_batch, dynamo=dynamo)

        from .quantize import calibration_batches, quantize_onnx

        net = inference_network(model)
        meta = export_metadata(net)
        batches = calibration_batches(meta, calib_dataset, calib_images, data_dir)
        found = sum(len(b) for b in batches)
        if found < calib_images:  # a small dataset, or unreadable files skipped
            print(f"note: calibrating on {found} of the {calib_images} images asked for: all that "
                  f"{calib_dataset or meta.get('dataset') or 'the dataset'} has that could be read", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="googlenet-export-") as tmp:
            fp32 = export_onnx(net, Path(tmp) / "fp32.onnx", opset=opset, dynamic_batch=dynamic_batch,
                               dynamo=dynamo, meta=meta)
            return quantize_onnx(fp32, out, batches, progress=progress)
