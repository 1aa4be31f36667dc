"""`googlenet export WEIGHTS [--format onnx|torchscript|ncnn] [--int8] [--dynamic-batch] [--opset N] [--out FILE]`."""
from __future__ import annotations

import argparse
import sys

# Kept here (not imported from googlenet.export) so `googlenet --help` does not import torch.
DEFAULT_OPSET = 17
DEFAULT_CALIB_IMAGES = 300
FORMATS = ("onnx", "torchscript", "ncnn")
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export the inference network to ONNX, TorchScript or ncnn (ONNX optionally int8)",
        description="Export a weights file's inference network (aux heads dropped, eval mode) with its "
        "preprocessing and class names embedded. ONNX files are checked with onnx.checker and run "
        "once with onnxruntime against PyTorch before they are kept; ncnn exports (NAME.param, NAME.bin, "
        "NAME.json) are run once in ncnn against PyTorch.",
        epilog="examples:\n"
        "  googlenet export runs/demo/model.safetensors  # -> runs/demo/model.onnx (batch 1)\n"
        "  googlenet export runs/demo/model.safetensors --format onnx --dynamic-batch  # -> runs/demo/model.onnx\n"
        "  googlenet export runs/demo/model.safetensors --format onnx --int8  # -> runs/demo/model.int8.onnx\n"
        "  googlenet export runs/demo/model.safetensors --format torchscript  # -> runs/demo/model.torchscript.pt\n"
        "  googlenet export runs/demo/model.safetensors --format ncnn  # -> runs/demo/model.ncnn.param/.bin/.json\n"
        "  googlenet export runs/demo/model.safetensors --out deploy/shoes.pt  # TorchScript, from the suffix\n"
        "  googlenet export runs/demo  # a finished run folder: its model.safetensors -> runs/demo/model.onnx\n"
        "  googlenet predict runs/demo/model.onnx shoe.png  # run the ONNX export",
    )
    p.add_argument("weights", metavar="WEIGHTS", help="a .safetensors weights file written by googlenet, "
                   "or a finished run folder (RUN means RUN/model.safetensors)")
    p.add_argument("--format", metavar="onnx|torchscript|ncnn", help="the file format to write (default: from "
                   "--out's suffix, .onnx, .pt/.pth/.ts or .param; onnx without --out)")
    p.add_argument("--out", metavar="FILE", help="output file (default: next to WEIGHTS, NAME.onnx, "
                   "NAME.int8.onnx, NAME.torchscript.pt or NAME.ncnn.param, whose .bin and .json go beside it)")
    p.add_argument("--int8", action="store_true", help="ONNX only: static int8 quantization for CPU, "
                   "calibrated on training images of the weights' dataset")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX only: any batch size (default: 1)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N",
                   help=f"ONNX opset, 13-20 (default {DEFAULT_OPSET})")
    g = p.add_argument_group("int8 calibration")
    g.add_argument("--calib-dataset", metavar="NAME", help="calibration data (default: the dataset the "
                   "weights name; 'random' = noise, for tests only)")
    g.add_argument("--calib-images", type=int, default=DEFAULT_CALIB_IMAGES, metavar="N",
                   help=f"training images used (default {DEFAULT_CALIB_IMAGES}, at most 5000)")
    g.add_argument("--data", metavar="DIR", help="where the calibration dataset lives")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError

    if args.format is None:
        args.format = format_from_suffix(args.out)
    if args.format not in FORMATS:
        raise UserError(f"unknown format {args.format!r}; choose from {', '.join(FORMATS)}")
    check_suffix_agrees(args.format, args.out)
    if args.format != "onnx" and (args.dynamic_batch or args.opset != DEFAULT_OPSET):
        raise UserError("--dynamic-batch and --opset apply to --format onnx only")
    # Without --int8 nothing is calibrated: a silently ignored --data reads as if it were used.
    if not args.int8 and (args.calib_dataset or args.data or args.calib_images != DEFAULT_CALIB_IMAGES):
        raise UserError("--calib-dataset, --calib-images and --data calibrate --int8 only; add --int8 "
                        "or leave them out")
    from ..export import export

    path = export(args.weights, args.format, out=args.out, int8=args.int8, dynamic_batch=args.dynamic_batch,
                  opset=args.opset, calib_dataset=args.calib_dataset, calib_images=args.calib_images,
                  data_dir=args.data, progress=True)
    kind = "int8 ONNX" if args.int8 else {"onnx": "ONNX", "torchscript": "TorchScript", "ncnn": "ncnn"}[args.format]
    size = path.stat().st_size
    if args.format == "ncnn":  # the weights are in the .bin beside the .param
        size += path.with_suffix(".bin").stat().st_size
        path = f"{path} (+ .bin, .json)"
    print(f"wrote {kind} {path} ({size / 1e6:.1f} MB)", file=sys.stdout)
    return 0


def suffix_format(out: str | None) -> str | None:
    """The format an --out's suffix names (ONNX without --out), or None for any other suffix."""
    from pathlib import Path

    suffix = Path(out).suffix.lower() if out else ".onnx"
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".param":
        return "ncnn"
    return "torchscript" if suffix in TORCHSCRIPT_SUFFIXES else None


def format_from_suffix(out: str | None) -> str:
    """--format left out: ONNX without --out or for an --out ending .onnx, TorchScript for one
    ending .pt/.pth/.ts; any other suffix is a one-line error (no ONNX file named x.tflite)."""
    from ..errors import UserError

    fmt = suffix_format(out)
    if fmt is None:
        raise UserError(f"cannot tell the format from {out!r}; give --format onnx|torchscript|ncnn, or an --out "
                        f"ending .onnx, {'/'.join(TORCHSCRIPT_SUFFIXES)} or .param")
    return fmt


def check_suffix_agrees(fmt: str, out: str | None) -> None:
    """An --out whose suffix names the other format is refused: predict and eval pick the
    backend by suffix, so a TorchScript file named x.onnx (or ONNX named x.pt) would fail
    there with a misleading error. Suffixes that name no format are the user's choice."""
    from ..errors import UserError

    named = suffix_format(out) if out else None
    if named is not None and named != fmt:
        wanted = {"onnx": ".onnx", "ncnn": ".param"}.get(fmt, "/".join(TORCHSCRIPT_SUFFIXES))
        raise UserError(f"--format {fmt} contradicts --out {out}, whose suffix means {named}; "
                        f"end it in {wanted}, or leave --format out")
