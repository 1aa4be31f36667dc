"""Run a GoogLeNet in ncnn on the CPU: the fastest exact batch-1 path measured on x86 here.

Why ncnn: on this project's 2-core CPU the direct fp32 convolutions of oneDNN and ONNX
Runtime already run at the cores' peak, so only fewer multiplies can go faster. ncnn
computes the 3x3 convolutions (two thirds of GoogLeNet's arithmetic) with Winograd
transforms, F(2x2, 3x3) and F(4x4, 3x3), in fp32: 2.25-4x fewer multiplies for the same
result up to float rounding (BENCHMARKS.md has the figures and the measured error).

The network ncnn runs is `FoldedGoogLeNet` (batch norm folded, each Inception's three
input 1x1 convs merged), traced to TorchScript and converted by pnnx, ncnn's own
converter, with the weights kept in fp32 (pnnx's default would store fp16: not exact).
Both come from PyPI (`pip install 'googlenet[ncnn]'`).

    >>> engine = NcnnEngine(model, input_shape=(1, 3, 224, 224))
    >>> logits = engine(batch)  # float N x C x H x W, already normalised
"""
from __future__ import annotations

import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .models.googlenet import GoogLeNet

INSTALL_HINT = "pip install 'googlenet[ncnn]'"


def ncnn_available() -> bool:
    """Whether ncnn (the runtime) and pnnx (the converter) can both be imported."""
    try:
        import ncnn  # noqa: F401
        import pnnx  # noqa: F401
    except ImportError:
        return False
    return True


def _options(net, threads: int) -> None:
    """Exact fp32 arithmetic, Winograd for the 3x3 convolutions, no spinning between calls."""
    opt = net.opt
    opt.num_threads = threads
    # Idle worker threads sleep as soon as a run returns, so the PyTorch code around each
    # call (decoding, preprocessing, another model) gets the cores back at once.
    opt.openmp_blocktime = 0
    opt.lightmode = True  # free each intermediate blob once its consumers have run
    opt.use_packing_layout = True
    opt.use_winograd_convolution = True
    opt.use_winograd23_convolution = True
    opt.use_winograd43_convolution = True
    # F(6x6, 3x3) was no faster here and has the largest rounding error of the three.
    opt.use_winograd63_convolution = False
    # Reduced-precision storage and arithmetic would not be exact.
    for name in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic",
                 "use_bf16_storage", "use_bf16_packed", "use_int8_inference"):
        if hasattr(opt, name):
            setattr(opt, name, False)


def convert_to_ncnn(model: GoogLeNet, input_shape: tuple[int, int, int, int], folder: str | Path) -> tuple[Path, Path]:
    """Write `model` (eval semantics, aux heads dropped) as ncnn's model.ncnn.param and
    model.ncnn.bin in `folder`, via a TorchScript trace of its folded form and pnnx."""
    import pnnx

    from .fast.folded import FoldedGoogLeNet

    folder = Path(folder)
    engine = FoldedGoogLeNet(model).eval()
    example = torch.rand(1, *input_shape[1:]) + 0.1
    traced_path = folder / "model.pt"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", category=FutureWarning)  # torch.jit's deprecation notice
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)  # LRN's empty-input check
        torch.jit.save(torch.jit.trace(engine, example), str(traced_path))
    param, weights = folder / "model.ncnn.param", folder / "model.ncnn.bin"
    shape = ",".join(str(d) for d in example.shape)
    # pnnx writes its own intermediate files too; every path is named so all stay in `folder`.
    outputs = {"pnnxparam": "model.pnnx.param", "pnnxbin": "model.pnnx.bin", "pnnxpy": "model_pnnx.py",
               "pnnxonnx": "model.pnnx.onnx", "ncnnparam": param.name, "ncnnbin": weights.name,
               "ncnnpy": "model_ncnn.py"}
    command = [pnnx.EXEC_PATH, str(traced_path), f"inputshape=[{shape}]f32", "device=cpu", "fp16=0"]
    command += [f"{key}={folder / name}" for key, name in outputs.items()]
    done = subprocess.run(command, capture_output=True, text=True, cwd=folder)
    if done.returncode != 0 or not param.is_file() or not weights.is_file():
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"pnnx could not convert the model to ncnn (exit code {done.returncode}): {tail}")
    return param, weights


# ncnn's per-layer feature mask (param key 31): bit 6 turns Winograd off for that layer.
FEATMASK_KEY, NO_WINOGRAD = "31", 1 << 6
# At 7 x 7 and below, the F(4x4, 3x3) tiles cover the map 2 x 2 times over a padded 8 x 8: more
# work than the direct convolution, and 4x the weights to stream. Direct convolution there made
# googlenet_tv's batch-1 latency 0.45-0.7 ms (about 4%) lower on the 2-core CPU (BENCHMARKS.md).
WINOGRAD_MIN_PIXELS = 8 * 8


def _layer_fields(line: str) -> tuple[str, list[str], dict[str, str]] | None:
    """(type, input blob names, params) of one layer line of an ncnn .param file."""
    parts = line.split()
    if len(parts) < 4:
        return None
    kind, inputs, outputs = parts[0], int(parts[2]), int(parts[3])
    blobs = parts[4:4 + inputs]
    params = dict(p.split("=", 1) for p in parts[4 + inputs + outputs:] if "=" in p)
    return kind, blobs, params


def _net(param: Path, weights: Path, threads: int):
    import ncnn

    net = ncnn.Net()
    _options(net, threads)
    if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
        raise RuntimeError(f"ncnn could not load the converted model ({param.name}, {weights.name})")
    return net


def direct_small_3x3_convs(param: Path, weights: Path, input_shape: tuple[int, ...], threads: int) -> int:
    """Turn Winograd off (in `param`, in place) for the 3x3 stride-1 convolutions whose input
    is smaller than WINOGRAD_MIN_PIXELS at `input_shape`; returns how many. The sizes are
    read off ncnn itself, by running one example through the converted network."""
    import ncnn

    lines = param.read_text().split("\n")
    net = _net(param, weights, threads)
    example = np.ascontiguousarray((np.random.default_rng(0).random(input_shape[1:]) + 0.1).astype(np.float32))
    changed = 0
    for i, line in enumerate(lines):
        fields = _layer_fields(line)
        if fields is None or fields[0] != "Convolution":
            continue
        _, (blob,), params = fields
        kernel, kernel_h = params.get("1"), params.get("11", params.get("1"))
        if (kernel, kernel_h, params.get("3", "1"), params.get("13", params.get("3", "1"))) != ("3", "3", "1", "1"):
            continue
        extractor = net.create_extractor()
        extractor.input(net.input_names()[0], ncnn.Mat(example))
        _, mat = extractor.extract(blob)
        if mat.w * mat.h < WINOGRAD_MIN_PIXELS:
            mask = int(params.get(FEATMASK_KEY, "0")) | NO_WINOGRAD
            kept = [p for p in line.split() if not p.startswith(f"{FEATMASK_KEY}=")]
            lines[i] = " ".join(kept) + f" {FEATMASK_KEY}={mask}"
            changed += 1
    param.write_text("\n".join(lines))
    return changed


class NcnnEngine:
    """`model` converted to ncnn once, then called like the model in eval mode: a float
    N x C x H x W tensor in, N x num_classes fp32 logits out (ncnn runs one image at a time)."""

    def __init__(self, model: GoogLeNet, input_shape: tuple[int, int, int, int] | None = None,
                 threads: int | None = None) -> None:
        self.input_shape = tuple(input_shape or (1, model.in_chans, 224, 224))
        self.threads = threads or torch.get_num_threads()
        with tempfile.TemporaryDirectory() as folder:  # ncnn copies the weights into memory
            param, weights = convert_to_ncnn(model, self.input_shape, folder)
            self.direct_convs = direct_small_3x3_convs(param, weights, self.input_shape, self.threads)
            self.net = _net(param, weights, self.threads)
        self._input, self._output = self.net.input_names()[0], self.net.output_names()[0]

    def __call__(self, x: Tensor) -> Tensor:
        import ncnn

        if x.dim() != 4 or x.shape[1:] != self.input_shape[1:]:
            raise ValueError(f"the ncnn engine takes N x {' x '.join(map(str, self.input_shape[1:]))} "
                             f"inputs, got {tuple(x.shape)}")
        images = x.detach().to("cpu", torch.float32).contiguous().numpy()
        logits = []
        for image in images:
            extractor = self.net.create_extractor()
            extractor.input(self._input, ncnn.Mat(image))  # wraps `image`, which outlives the run
            code, out = extractor.extract(self._output)
            if code != 0:
                raise RuntimeError(f"ncnn failed to run the model (code {code})")
            logits.append(np.array(out, dtype=np.float32).reshape(-1))
        return torch.from_numpy(np.stack(logits))
