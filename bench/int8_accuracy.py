"""Top-1 of the int8 ONNX export against fp32, on the test set of the weights' dataset.

    .venv/bin/python bench/int8_accuracy.py runs/demo/model.safetensors [--limit N] [--data DIR]

Exports the weights twice with the same code `googlenet export` runs (fp32 ONNX, and int8
calibrated on --calib-images training images), then scores PyTorch fp32, ONNX Runtime
fp32 and ONNX Runtime int8 on the same single-crop test images (preprocessed from the
weights' metadata, as `googlenet predict` does). Target (issue 5): int8 loses <= 0.5
point of top-1 against fp32. Prints a markdown table and JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

import googlenet
from googlenet.data.datasets import load_dataset
from googlenet.export import export
from googlenet.onnx_backend import OnnxClassifier
from googlenet.predict import TorchClassifier, preprocess

TARGET_LOSS_POINTS = 0.5
BATCH = 250


def top1(classify: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, labels: torch.Tensor,
         meta: dict) -> tuple[float, torch.Tensor]:
    """Accuracy in percent and the predicted labels."""
    predicted = torch.cat([classify(preprocess(chunk, meta)).argmax(1) for chunk in images.split(BATCH)])
    return 100.0 * (predicted == labels).float().mean().item(), predicted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", help="a .safetensors weights file trained by googlenet")
    parser.add_argument("--limit", type=int, help="score only the first N test images (plumbing checks)")
    parser.add_argument("--calib-images", type=int, default=300, help="training images for calibration")
    parser.add_argument("--data", help="dataset folder (default: where googlenet finds it)")
    parser.add_argument("--dataset", help="override the dataset the weights name")
    parser.add_argument("--json", metavar="FILE", help="also write the JSON here")
    args = parser.parse_args(argv)

    model = googlenet.load_weights(args.weights)
    dataset = args.dataset or (model.meta or {}).get("dataset")
    if not dataset:
        parser.error("the weights do not name their dataset; pass --dataset")
    test = load_dataset(dataset, "test", args.data, limit=args.limit)

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="googlenet-int8-acc-") as tmp:
        fp32_path = export(args.weights, "onnx", out=Path(tmp) / "fp32.onnx", dynamic_batch=True)
        int8_path = export(args.weights, "onnx", out=Path(tmp) / "int8.onnx", int8=True, dynamic_batch=True,
                           calib_dataset=dataset, calib_images=args.calib_images, data_dir=args.data)
        sizes = {"fp32": fp32_path.stat().st_size, "int8": int8_path.stat().st_size}
        fp32_onnx, int8_onnx = OnnxClassifier(fp32_path), OnnxClassifier(int8_path)
        meta = fp32_onnx.meta
        torch_fp32 = TorchClassifier(model, "cpu")
        acc_torch, pred_torch = top1(torch_fp32, test.images, test.labels, meta)
        acc_fp32, pred_fp32 = top1(fp32_onnx, test.images, test.labels, meta)
        acc_int8, pred_int8 = top1(int8_onnx, test.images, test.labels, meta)

    loss = acc_fp32 - acc_int8
    report = {
        "benchmark": "int8 accuracy", "weights": str(args.weights), "model": model.model_name,
        "dataset": dataset, "test_images": len(test), "calibration_images": args.calib_images,
        "top1": {"pytorch_fp32": acc_torch, "onnxruntime_fp32": acc_fp32, "onnxruntime_int8": acc_int8},
        "int8_loss_points": loss, "target_loss_points": TARGET_LOSS_POINTS,
        "meets_target": loss <= TARGET_LOSS_POINTS,
        "agreement_int8_vs_fp32": 100.0 * (pred_int8 == pred_fp32).float().mean().item(),
        "agreement_onnx_vs_torch": 100.0 * (pred_fp32 == pred_torch).float().mean().item(),
        "file_bytes": sizes, "seconds": round(time.time() - started, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "torch": torch.__version__,
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    print(f"| {model.model_name} on {dataset} test ({len(test)} images) | top-1 % | file MB |")
    print("|---|---:|---:|")
    print(f"| PyTorch fp32 | {acc_torch:.2f} | |")
    print(f"| ONNX Runtime fp32 | {acc_fp32:.2f} | {sizes['fp32'] / 1e6:.1f} |")
    print(f"| ONNX Runtime int8 ({args.calib_images} calibration images) | {acc_int8:.2f} | {sizes['int8'] / 1e6:.1f} |")
    verdict = "meets" if report["meets_target"] else "MISSES"
    print(f"\nint8 loss: {loss:+.2f} points ({verdict} the <= {TARGET_LOSS_POINTS} target); "
          f"int8 agrees with fp32 on {report['agreement_int8_vs_fp32']:.2f}% of images\n")
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
