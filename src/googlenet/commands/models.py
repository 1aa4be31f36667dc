"""`googlenet list-models`, `googlenet summary MODEL`, `googlenet import-torchvision`."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list-models", help="list the registered GoogLeNet variants",
                       description="List the model variants with their native input size.")
    p.set_defaults(func=list_models_cmd)

    p = sub.add_parser(
        "summary", help="print a model as the paper's Table 1 (measured from the live model)",
        description="Print MODEL layer by layer as in Table 1 of the paper: output sizes, the six "
        "channel columns, params and multiply-adds, measured with hooks on a real forward pass. "
        "For `googlenet` at 224 the paper's published params/ops stand beside each row.",
        epilog="example: googlenet summary googlenet --format markdown",
    )
    p.add_argument("model", help="a name from `googlenet list-models`")
    p.add_argument("--input-size", type=int, default=None, metavar="N",
                   help="square input side in pixels (default: the model's native size)")
    p.add_argument("--in-chans", type=int, default=None, metavar="C", help="input channels (default 3)")
    p.add_argument("--num-classes", type=int, default=None, metavar="K", help="classes (default: the model's)")
    p.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    p.set_defaults(func=summary_cmd)

    p = sub.add_parser(
        "import-torchvision", help="convert a torchvision GoogLeNet .pth into a googlenet_tv weights file",
        description="Read a torchvision GoogLeNet state_dict (e.g. the published googlenet-1378be20.pth) "
        "with torch.load(weights_only=True), load it strictly into googlenet_tv and save it as "
        "safetensors with its metadata (classes, input size, mean/std).",
        epilog="example:\n  googlenet import-torchvision googlenet-1378be20.pth googlenet_tv.safetensors",
    )
    p.add_argument("pth", help="torchvision checkpoint (.pth state_dict)")
    p.add_argument("out", help="output .safetensors file")
    p.add_argument("--transform-input", dest="transform_input", action="store_true", default=None,
                   help="expect ImageNet-normalised input (default when the file has 1000 classes)")
    p.add_argument("--no-transform-input", dest="transform_input", action="store_false",
                   help="expect plain [0, 1] input (default for other class counts)")
    p.set_defaults(func=import_torchvision_cmd)


def list_models_cmd(args: argparse.Namespace) -> int:
    from ..models import list_models, model_variant

    for name in list_models():
        v = model_variant(name)
        stem = v.stem + ("+pool" if v.stem_pool else "")
        print(f"{name:<20} input {v.input_size:<4} stem={stem} batchnorm={'yes' if v.norm else 'no'} "
              f"lrn={'yes' if v.lrn else 'no'} branch3={v.branch3}")
    return 0


def summary_cmd(args: argparse.Namespace) -> int:
    import re

    from ..errors import UserError, first_line
    from ..models import check_input_size, create_model
    from ..summary import render, summarize

    options = {}
    if args.in_chans is not None:
        options["in_chans"] = args.in_chans
    if args.num_classes is not None:
        options["num_classes"] = args.num_classes
    for flag, value in (("--input-size", args.input_size), ("--in-chans", args.in_chans),
                        ("--num-classes", args.num_classes)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be a positive integer, not {value}")
    model = create_model(args.model, **options)
    if args.input_size is not None:  # pools that would shrink it below 1x1: say what size it needs
        check_input_size(model, args.input_size, model.in_chans, args.model)
    try:
        table = summarize(model, args.input_size)
    except RuntimeError as e:  # anything else the probe could not foresee
        asked = re.search(r"can't allocate memory: you tried to allocate (\d+) bytes", str(e))
        if asked:  # not the allocator's "[enforce fail at alloc_cpu.cpp:127] err == 0. ..."
            raise UserError(f"{args.model} at {args.input_size}px needs more memory than this machine has (one "
                            f"layer asked for {int(asked.group(1)) / 2**30:.0f} GiB); use a smaller --input-size") from None
        raise UserError(f"{args.model} cannot run at {args.input_size}px: {first_line(e)}") from None
    print(render(table, args.format))
    return 0


def import_torchvision_cmd(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from ..errors import UserError, output_errors
    from ..models import import_torchvision, read_metadata

    pth, out = Path(args.pth), Path(args.out)
    if out.suffix.lower() != ".safetensors":  # predict/eval/export pick a file's reader by its suffix
        raise UserError(f"OUT {out} must end in .safetensors (the file written is safetensors weights), "
                        f"e.g. {out.with_suffix('.safetensors')}")
    if pth.is_dir():  # not "weights file not found": it is there, as a folder
        raise UserError(f"{pth} is a folder; give the torchvision .pth file itself")
    if pth.is_file() and out.exists() and os.path.samefile(pth, out):  # the .pth would be replaced
        raise UserError(f"OUT {out} is the input file itself and would be overwritten; pick another OUT file, "
                        f"e.g. {pth.with_name(pth.stem + '_tv.safetensors')}")
    with output_errors(args.out, "pick another OUT file"):
        out = import_torchvision(args.pth, args.out, transform_input=args.transform_input)
    meta = read_metadata(out)
    print(f"wrote {out} ({meta['model']}, {meta['options']['num_classes']} classes, "
          f"aux heads {'kept' if meta['options']['aux_logits'] else 'absent'})")
    return 0
