"""`googlenet predict WEIGHTS IMAGE...`: top-k labels with probabilities for each file."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="classify image files: top-k labels with probabilities",
        description="Classify each IMAGE with the model in WEIGHTS, preprocessed as recorded in the "
        "weights (channels, resize, centre crop, mean/std). Files that cannot be read as images get "
        "a one-line error on stderr, the others are still classified, and the exit code is 1.",
        epilog="examples:\n"
        "  googlenet predict runs/demo/model.safetensors shoe.png shirt.jpg --topk 3\n"
        "  googlenet predict runs/demo/model.onnx photos/*.jpg --json   # ONNX Runtime, chosen by the suffix\n"
        "  googlenet predict runs/demo photos/                          # every image in a folder",
    )
    p.add_argument("weights", help=".safetensors weights written by googlenet, a finished run folder "
                   "(RUN means RUN/model.safetensors), an .onnx export or an ncnn export's .param file")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (JPEG, PNG, BMP, GIF, TIFF, WebP), "
                   "or folders: the image files directly in each")
    p.add_argument("--topk", type=int, default=5, metavar="K", help="labels per image (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per line per file, with its path")
    p.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "ncnn"), default="auto",
                   help="torch runs .safetensors weights, onnxruntime an .onnx export, ncnn a .param export "
                   "(default auto: by the file's suffix); --backend onnxruntime or ncnn also exports "
                   ".safetensors weights for itself on the CPU: a few seconds at start-up (none for a "
                   "`googlenet export` file); ncnn then has the lowest exact per-image latency here, "
                   "onnxruntime the highest batched img/s (needs `pip install 'googlenet[onnx]'` or "
                   "'googlenet[ncnn]')")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (torch backend; ONNX Runtime and ncnn run on the CPU; default auto)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N",
                   help="images per forward pass (ncnn runs them one at a time)")
    p.set_defaults(func=predict_cmd)


def predict_cmd(args: argparse.Namespace) -> int:
    import json
    import sys

    from ..errors import UserError
    from ..evaluate import torch_only_flags_note
    from ..images import FOLDER_IMAGE_SUFFIXES, expand_folders
    from ..predict import format_prediction, load_classifier, predict_files

    if not args.images:  # argparse's "required: IMAGE" would not say that the weights come first
        if args.weights.lower().endswith(FOLDER_IMAGE_SUFFIXES):
            raise UserError(f"no weights given: the first argument is the model, then the images "
                            f"(googlenet predict WEIGHTS {args.weights})")
        raise UserError("no images given: googlenet predict WEIGHTS IMAGE [IMAGE ...]")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, not {args.batch_size}")
    classifier = load_classifier(args.weights, backend=args.backend, device=args.device)
    for note in torch_only_flags_note([args.weights], args.backend, args.device, bf16=False):
        print(f"googlenet predict: {note}", file=sys.stderr)  # stderr: --json output stays one object a line
    failed = 0
    images = expand_folders(args.images)
    for prediction in predict_files(classifier, images, topk=args.topk, batch_size=args.batch_size):
        if not prediction.ok:
            failed += 1
            print(f"googlenet predict: error: {prediction.error}", file=sys.stderr)
            if args.json:  # keep one line per file on stdout too, so consumers can align them
                print(json.dumps(prediction.to_dict()), flush=True)
            continue
        print(json.dumps(prediction.to_dict()) if args.json else format_prediction(prediction), flush=True)
    return 1 if failed else 0
