"""`googlenet eval WEIGHTS`: accuracy on a test set, with the paper's multi-crop testing."""
from __future__ import annotations

import argparse

DATASET_CHOICES = ("fashion-mnist", "cifar10", "cifar100", "imagefolder")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="top-1/top-5 accuracy, per-class accuracy and confusion matrix on a test set",
        description="Evaluate a weights file on its dataset's test split (the dataset recorded in the "
        "weights unless --dataset says otherwise). --crops 10/144 is the paper's multi-crop testing "
        "(softmax averaged over the views); --ensemble averages softmax over several models.",
        epilog="examples:\n"
        "  googlenet eval runs/demo/model.safetensors --limit-test 1000\n"
        "  googlenet eval runs/demo/model.safetensors --crops 144 --limit-test 100\n"
        "  googlenet eval runs/demo/model.onnx                       # ONNX Runtime, chosen by the suffix\n"
        "  googlenet eval a.safetensors --ensemble b.safetensors c.safetensors --crops 10 --json\n"
        "  googlenet eval model.safetensors --dataset imagefolder --data DIR   # DIR/test/<class>/*.jpg, else DIR/val/",
    )
    p.add_argument("weights", help="a .safetensors file written by `googlenet train` (or import-torchvision), "
                   "a finished run folder (RUN means RUN/model.safetensors), an .onnx export or an ncnn .param export")
    p.add_argument("--dataset", choices=DATASET_CHOICES, default=None,
                   help="test set (default: the dataset recorded in the weights)")
    p.add_argument("--data", metavar="DIR", default=None, help="dataset folder (imagefolder: DIR/test/<class>/..., else DIR/val/<class>/...)")
    p.add_argument("--limit-test", type=int, default=None, metavar="N", help="evaluate a fixed subset of N images")
    p.add_argument("--crops", type=int, choices=(1, 10, 144), default=1,
                   help="views per image: 1 centre crop, 10 (corners+centre, mirrored) or 144 (paper, 4 scales)")
    p.add_argument("--ensemble", nargs="+", default=[], metavar="WEIGHTS",
                   help="more weights files; the softmax is averaged over all models")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="images (views) per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (torch backend; ONNX Runtime and ncnn run on the CPU; default auto)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (torch backend; faster on GPU; fp32 by default)")
    p.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "ncnn"), default="auto",
                   help="torch runs .safetensors weights, onnxruntime .onnx exports, ncnn .param exports "
                   "(default auto: by each file's suffix, so an ensemble may mix them); onnxruntime and ncnn "
                   "also export .safetensors weights for themselves, a few seconds per model at start-up: on a "
                   "CPU, onnxruntime evaluated about 2x faster than torch here (needs `pip install "
                   "'googlenet[onnx]'`; ncnn: 'googlenet[ncnn]')")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    p.set_defaults(func=eval_cmd)


def eval_cmd(args: argparse.Namespace) -> int:
    import json
    import sys

    from ..evaluate import evaluate, format_result

    result = evaluate(args.weights, dataset=args.dataset, data_dir=args.data, limit_test=args.limit_test,
                      crops=args.crops, ensemble=args.ensemble, batch_size=args.batch_size,
                      device=args.device, bf16=args.bf16, backend=args.backend,
                      progress=True)  # a bar on a terminal, else a line a minute
    for reason in result.skipped:
        print(f"googlenet eval: warning: skipped {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(format_result(result))
    return 0
