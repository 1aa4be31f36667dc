"""Run a GoogLeNet in ncnn on the CPU: the lowest exact per-image latency measured on x86 here.

Why ncnn: on this project's 2-core CPU the direct fp32 convolutions of oneDNN and ONNX
Runtime already run at the cores' peak, so only fewer multiplies can go faster. ncnn
computes 3x3 convolutions (two thirds of GoogLeNet's arithmetic) with the Winograd
transform F(4x4, 3x3) in fp32: 4x fewer multiplies for the same result up to float
rounding, which is about twice that of the plain fp32 model (BENCHMARKS.md has the
latencies and the errors against float64).

The network ncnn runs is `FoldedGoogLeNet` (batch norm folded, each Inception's three
input 1x1 convs merged), traced to TorchScript and converted by pnnx, ncnn's own
converter, with the weights kept in fp32 (pnnx's default would store fp16: not exact).
Converting takes a few seconds, once per engine. Both packages come from PyPI
(`pip install 'googlenet[ncnn]'`).

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


def require_ncnn(converter: bool = True) -> None:
    """ImportError, naming the extra to install, unless ncnn (and, to convert, pnnx) can be imported."""
    if converter and not ncnn_available():
        raise ImportError(f"the ncnn backend needs the ncnn and pnnx packages: {INSTALL_HINT}")
    try:
        import ncnn  # noqa: F401
    except ImportError:
        raise ImportError(f"running an ncnn export needs the ncnn package: {INSTALL_HINT}") from None


def example_image(input_shape: tuple[int, ...]) -> np.ndarray:
    """A fixed C x H x W example (positive, like normalised pixels are mostly not zero), made
    without touching torch's or numpy's global random state."""
    rng = np.random.default_rng(0)
    return np.ascontiguousarray(rng.random(input_shape[1:], dtype=np.float32) + 0.1)


def _options(net, threads: int, keep_blobs: bool = False) -> None:
    """Exact fp32 arithmetic with Winograd for 3x3 convolutions, on `threads` threads."""
    opt = net.opt
    opt.num_threads = threads
    opt.lightmode = not keep_blobs  # free each intermediate blob once its consumers have run
    opt.use_packing_layout = True
    opt.use_winograd_convolution = True
    # Without shape hints in the .param file (pnnx writes none) ncnn prepares F(4x4, 3x3)
    # kernels; F(6x6, 3x3) was no faster here and rounds the most.
    opt.use_winograd43_convolution = True
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
    example = torch.from_numpy(example_image(input_shape)).unsqueeze(0)
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
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=folder)
    except OSError as e:  # the pnnx executable is missing or cannot run
        raise RuntimeError(f"pnnx could not start ({e.strerror}: {pnnx.EXEC_PATH}); reinstall it: {INSTALL_HINT}") from None
    if done.returncode != 0 or not param.is_file() or not weights.is_file():
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"pnnx could not convert the model to ncnn (exit code {done.returncode})"
                           + (f": {tail}" if tail else ""))
    return param, weights


# ncnn's .param format: a magic line, a count line, then one line per layer:
#   type name n_inputs n_outputs input_blobs... output_blobs... key=value...
# Convolution keys used here: 1 kernel width, 11 kernel height (default: the width),
# 3 stride width, 13 stride height (default: the width); 31 the layer's feature mask, in
# which bit 6 turns Winograd off for that layer alone. (Array values have negative keys.)
KERNEL_W, KERNEL_H, STRIDE_W, STRIDE_H, FEATMASK = "1", "11", "3", "13", "31"
NO_WINOGRAD = 1 << 6
# At 7 x 7 and below, F(4x4, 3x3) tiles cover the map 2 x 2 times over a padded 8 x 8: more
# work than im2col + GEMM, and 4x the weights to stream. Without Winograd there, googlenet_tv's
# batch-1 latency was 0.45-0.7 ms (about 4%) lower on the 2-core CPU (BENCHMARKS.md).
WINOGRAD_MIN_PIXELS = 8 * 8


def _layer_fields(line: str) -> tuple[str, list[str], dict[str, str]] | None:
    """(type, input blob names, params) of one layer line of an ncnn .param file, else None."""
    parts = line.split()
    if len(parts) < 4:
        return None
    kind, inputs, outputs = parts[0], int(parts[2]), int(parts[3])
    blobs = parts[4:4 + inputs]
    params = dict(p.split("=", 1) for p in parts[4 + inputs + outputs:] if "=" in p)
    return kind, blobs, params


def _is_3x3_stride_1(params: dict[str, str]) -> bool:
    kernel, stride = params.get(KERNEL_W, "0"), params.get(STRIDE_W, "1")
    return (kernel, params.get(KERNEL_H, kernel), stride, params.get(STRIDE_H, stride)) == ("3", "3", "1", "1")


def _net(param: Path, weights: Path, threads: int, keep_blobs: bool = False):
    import ncnn

    net = ncnn.Net()
    _options(net, threads, keep_blobs)
    if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
        raise RuntimeError(f"ncnn could not load the converted model ({param.name}, {weights.name})")
    return net


def no_winograd_on_small_maps(param: Path, weights: Path, input_shape: tuple[int, ...], threads: int) -> int:
    """Turn Winograd off (in `param`, in place) for the 3x3 stride-1 convolutions whose input
    is smaller than WINOGRAD_MIN_PIXELS at `input_shape`; returns how many. The sizes are
    read off ncnn itself, from one run of an example through the converted network."""
    import ncnn

    lines = param.read_text().split("\n")
    net = _net(param, weights, threads, keep_blobs=True)  # one forward; every blob stays readable
    example = example_image(input_shape)
    extractor = net.create_extractor()
    extractor.input(net.input_names()[0], ncnn.Mat(example))
    changed = 0
    for i, line in enumerate(lines):
        fields = _layer_fields(line)
        if fields is None or fields[0] != "Convolution" or not _is_3x3_stride_1(fields[2]) or len(fields[1]) != 1:
            continue
        (blob,), params = fields[1], fields[2]
        code, mat = extractor.extract(blob)
        if code != 0 or mat.dims != 3:
            raise RuntimeError(f"ncnn could not compute blob {blob} of the converted model (code {code})")
        if mat.w * mat.h < WINOGRAD_MIN_PIXELS:
            mask = int(params.get(FEATMASK, "0")) | NO_WINOGRAD
            kept = [p for p in line.split() if not p.startswith(f"{FEATMASK}=")]
            lines[i] = " ".join(kept) + f" {FEATMASK}={mask}"
            changed += 1
    param.write_text("\n".join(lines))
    return changed


def convert_for_ncnn(model: GoogLeNet, input_shape: tuple[int, int, int, int], folder: str | Path,
                     threads: int | None = None) -> tuple[Path, Path, int]:
    """convert_to_ncnn, then Winograd off on small maps: (param, weights, how many went off)."""
    param, weights = convert_to_ncnn(model, input_shape, folder)
    changed = no_winograd_on_small_maps(param, weights, input_shape, threads or torch.get_num_threads())
    return param, weights, changed


class NcnnEngine:
    """`model` converted to ncnn once (a few seconds), then called like the model in eval mode:
    a float N x C x H x W tensor of `input_shape`'s C, H, W in, N x num_classes fp32 logits out.
    ncnn runs one image at a time, on `threads` threads (default: torch.get_num_threads()).
    `NcnnEngine.load` runs files `googlenet export --format ncnn` wrote instead."""

    def __init__(self, model: GoogLeNet, input_shape: tuple[int, int, int, int] | None = None,
                 threads: int | None = None) -> None:
        require_ncnn()
        shape = tuple(input_shape or (1, model.in_chans, 224, 224))
        threads = threads or torch.get_num_threads()
        with tempfile.TemporaryDirectory() as folder:  # ncnn copies the weights into memory
            param, weights, self.without_winograd = convert_for_ncnn(model, shape, folder, threads)
            self._attach(_net(param, weights, threads), shape, model.num_classes, threads)

    @classmethod
    def load(cls, param: str | Path, weights: str | Path, input_shape: tuple[int, int, int, int],
             num_classes: int, threads: int | None = None) -> "NcnnEngine":
        require_ncnn(converter=False)
        engine = cls.__new__(cls)
        threads = threads or torch.get_num_threads()
        engine.without_winograd = None  # decided when the files were written
        engine._attach(_net(Path(param), Path(weights), threads), tuple(input_shape), num_classes, threads)
        return engine

    def _attach(self, net, input_shape: tuple[int, ...], num_classes: int, threads: int) -> None:
        self.net, self.input_shape, self.num_classes, self.threads = net, input_shape, num_classes, threads
        self._input, self._output = net.input_names()[0], net.output_names()[0]

    def __call__(self, x: Tensor) -> Tensor:
        import ncnn

        if x.dim() != 4 or x.shape[1:] != self.input_shape[1:]:
            raise ValueError(f"the ncnn engine takes N x {' x '.join(map(str, self.input_shape[1:]))} "
                             f"inputs, got {tuple(x.shape)}")
        images = x.detach().to("cpu", torch.float32).contiguous().numpy()
        logits = np.empty((len(images), self.num_classes), dtype=np.float32)
        for i, image in enumerate(images):
            extractor = self.net.create_extractor()
            extractor.input(self._input, ncnn.Mat(image))  # wraps `image`, which outlives the run
            code, out = extractor.extract(self._output)
            if code != 0:
                raise RuntimeError(f"ncnn failed to run the model (code {code})")
            logits[i] = np.asarray(out, dtype=np.float32).reshape(-1)
        return torch.from_numpy(logits)
