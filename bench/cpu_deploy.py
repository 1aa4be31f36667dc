"""CPU batch-1 latency of the deployment paths, side by side in one process.

    .venv/bin/python bench/cpu_deploy.py [--quick] [--threads N] [--json FILE]

Rows: torchvision's googlenet eager (the reference a user would otherwise pick), ours
eager NCHW, ours channels_last, ONNX Runtime fp32 and ONNX Runtime int8 (QDQ, per-channel),
at 224 px (googlenet_tv, 3 channels, 1000 classes) and at 28 px (googlenet_cifar, 1 channel,
10 classes; torchvision's network gets the same image on 3 channels). Weights are random:
latency does not depend on their values, and int8 is calibrated on random images for the
same reason (accuracy is bench/int8_accuracy.py's job). Timing: warm-up runs excluded,
each call timed alone with perf_counter, median (and 10th/90th percentiles) of the repeats,
random non-zero inputs. The machine may be shared: `uptime` is recorded before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import googlenet
from googlenet.export import export_metadata, export_onnx, inference_network
from googlenet.onnx_backend import OnnxClassifier
from googlenet.quantize import calibration_batches, quantize_onnx

BACKENDS = ("torchvision eager", "ours eager NCHW", "ours channels_last", "ONNX Runtime fp32", "ONNX Runtime int8")


def load_average() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def time_calls(fn: Callable[[], object], warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    q = np.percentile(samples, [10, 90])
    return {"median_ms": statistics.median(samples), "p10_ms": float(q[0]), "p90_ms": float(q[1]),
            "repeats": repeats}


def gflops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Forward FLOPs (2 per multiply-add) counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / 1e9


def torch_runner(model: torch.nn.Module, x: torch.Tensor, channels_last: bool) -> Callable[[], object]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.eval().to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt)

    def run():
        with torch.inference_mode():
            return model(x)

    return run


def ort_runner(path: Path, x: torch.Tensor, threads: int) -> Callable[[], object]:
    session = OnnxClassifier(path, threads=threads).session
    name = session.get_inputs()[0].name
    array = x.numpy()
    return lambda: session.run(None, {name: array})


def torchvision_googlenet(num_classes: int) -> torch.nn.Module:
    from torchvision.models import googlenet as tv_googlenet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "init_weights default will change" notice
        return tv_googlenet(weights=None, aux_logits=False, init_weights=True, num_classes=num_classes).eval()


def bench_size(label: str, model_name: str, in_chans: int, num_classes: int, size: int, threads: int,
               warmup: int, repeats: int, calib_images: int, workdir: Path) -> list[dict]:
    torch.manual_seed(0)
    ours = googlenet.create_model(model_name, in_chans=in_chans, num_classes=num_classes)
    ours.meta = {"input_size": size, "resize": size}
    net = inference_network(ours)
    x = torch.rand(1, in_chans, size, size) + 0.1
    x_tv = x.expand(1, 3, size, size).contiguous() if in_chans == 1 else x

    fp32 = export_onnx(net, workdir / f"{model_name}.onnx")
    meta = export_metadata(net)
    int8 = quantize_onnx(fp32, workdir / f"{model_name}.int8.onnx",
                         calibration_batches(meta, "random", calib_images))
    sizes = {"ONNX Runtime fp32": fp32.stat().st_size, "ONNX Runtime int8": int8.stat().st_size}

    reference = torchvision_googlenet(num_classes)
    work = {"torchvision": gflops(reference, x_tv), "ours": gflops(net, x)}
    runners = {
        "torchvision eager": torch_runner(reference, x_tv, channels_last=False),
        "ours eager NCHW": torch_runner(net, x, channels_last=False),
        "ours channels_last": torch_runner(inference_network(ours), x, channels_last=True),
        "ONNX Runtime fp32": ort_runner(fp32, x, threads),
        "ONNX Runtime int8": ort_runner(int8, x, threads),
    }
    rows = []
    for backend in BACKENDS:
        stats = time_calls(runners[backend], warmup, repeats)
        is_tv = backend.startswith("torchvision")
        rows.append({"size": label, "model": "torchvision googlenet" if is_tv else model_name,
                     "backend": backend, "gflops": work["torchvision" if is_tv else "ours"],
                     "file_bytes": sizes.get(backend), **stats})
        print(f"  {label:>6} {backend:<20} {stats['median_ms']:8.2f} ms", file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    labels = list(dict.fromkeys(r["size"] for r in rows))
    by = {(r["size"], r["backend"]): r for r in rows}
    head = "| backend | " + " | ".join(f"{lab} median ms (p10-p90) | vs torchvision" for lab in labels) + " |"
    sep = "|---|" + "---:|---:|" * len(labels)
    lines = [head, sep]
    for backend in BACKENDS:
        cells = []
        for lab in labels:
            r, ref = by[(lab, backend)], by[(lab, "torchvision eager")]
            cells.append(f"{r['median_ms']:.2f} ({r['p10_ms']:.2f}-{r['p90_ms']:.2f})")
            cells.append(f"{ref['median_ms'] / r['median_ms']:.2f}x")
        lines.append(f"| {backend} | " + " | ".join(cells) + " |")
    lines.append("")
    for lab in labels:
        tv, ours = by[(lab, "torchvision eager")], by[(lab, "ours eager NCHW")]
        int8 = by[(lab, "ONNX Runtime int8")]
        lines.append(f"- {lab}: torchvision googlenet {tv['gflops']:.3f} GFLOP/image, {ours['model']} "
                     f"{ours['gflops']:.3f} GFLOP/image; ONNX fp32 file "
                     f"{by[(lab, 'ONNX Runtime fp32')]['file_bytes'] / 1e6:.1f} MB, int8 {int8['file_bytes'] / 1e6:.1f} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and calibration images (< 2 min)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="intra-op threads for PyTorch and ONNX Runtime alike (default: PyTorch's)")
    parser.add_argument("--json", metavar="FILE", help="also write the JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warmup, repeats_224, repeats_28, calib = (3, 15, 40, 8) if args.quick else (10, 60, 200, 32)

    load_before = load_average()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="googlenet-deploy-") as tmp:
        rows = bench_size("224 px", "googlenet_tv", 3, 1000, 224, args.threads, warmup, repeats_224, calib, Path(tmp))
        rows += bench_size("28 px", "googlenet_cifar", 1, 10, 28, args.threads, warmup, repeats_28, calib, Path(tmp))
    import onnxruntime

    report = {
        "benchmark": "cpu_deploy batch-1 latency",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "threads": args.threads,
                    "python": platform.python_version(), "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__},
        "uptime_before": load_before, "uptime_after": load_average(),
        "seconds": round(time.time() - started, 1),
        "quick": args.quick,
        "results": rows,
    }
    print(markdown(rows))
    print()
    print(f"load before: {load_before}\nload after:  {report['uptime_after']}")
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
