"""`optimize(model, device, mode)`: the one entry point to the fast paths."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from ..models.googlenet import GoogLeNet
from .cuda_graph import CUDAGraphRunner
from .folded import FoldedGoogLeNet
from .fused_inception import fuse_inception_modules

MODES = ("inference", "train")
PRECISIONS = ("fp32", "bf16")
BACKENDS = ("auto", "mkldnn", "eager", "onnxruntime", "ncnn")
# Backends that run outside PyTorch, on the CPU in fp32, from an export of the source.
EXTERNAL_BACKENDS = ("onnxruntime", "ncnn")


class InferenceModel(nn.Module):
    """Eval-only fast GoogLeNet: forward(x) -> logits (fp32), like the source in eval().

    The source model stays registered (`.source`) so parameters() and state_dict() are
    the plain model's, with the plain keys; `load_state_dict` loads into the source and
    rebuilds the folded engine. Build it on the device it will run on (`.to()` after
    building moves the source, not the engine; call `rebuild()` after that).
    """

    def __init__(
        self,
        source: GoogLeNet,
        precision: str = "fp32",
        channels_last: bool = True,
        backend: str = "auto",
        compile: bool = False,
        compile_mode: str | None = None,
        cuda_graphs: bool = False,
        example_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.source = source.eval()
        self.precision = precision
        self.channels_last = channels_last and backend not in EXTERNAL_BACKENDS  # they take NCHW
        self.backend = backend
        self.compile = compile
        self.compile_mode = compile_mode
        self.cuda_graphs = cuda_graphs
        self.example_shape = example_shape
        self.rebuild()

    # What save_weights and the CLI read from a model made by create_model.
    @property
    def model_name(self) -> str:
        return self.source.model_name

    @property
    def model_options(self) -> dict:
        return self.source.model_options

    @property
    def device(self) -> torch.device:
        return next(self.source.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    def rebuild(self) -> None:
        """(Re)fold the source's current weights into the engine (or, for ONNX Runtime and
        ncnn, re-export them: those backends run the export, and no PyTorch engine is kept)."""
        device = self.device
        backend = self.backend
        if backend == "auto":  # oneDNN's fused conv+ReLU wins on x86 CPUs in fp32
            mkldnn_ok = device.type == "cpu" and self.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            backend = "mkldnn" if mkldnn_ok and not self.compile else "eager"
        self.resolved_backend = backend
        if backend in EXTERNAL_BACKENDS:
            object.__setattr__(self, "engine", None)
            object.__setattr__(self, "_run", self._external_runner(backend, device))
            return
        engine = FoldedGoogLeNet(self.source).to(device=device, dtype=self.dtype)
        if self.channels_last:
            engine = engine.to(memory_format=torch.channels_last)
        if backend == "mkldnn":
            engine.pack_for_mkldnn(self._example(device))
        fn: Callable[[Tensor], Tensor] = engine
        if self.compile:
            fn = torch.compile(engine, mode=self.compile_mode)
        if self.cuda_graphs and device.type == "cuda":
            fn = CUDAGraphRunner(fn)
        # Plain attributes, not submodules: the state_dict stays the source's.
        object.__setattr__(self, "engine", engine)
        object.__setattr__(self, "_run", fn)

    def _external_runner(self, backend: str, device: torch.device) -> Callable[[Tensor], Tensor]:
        """The source exported for ONNX Runtime (as `googlenet export --format onnx` writes
        it) or converted to ncnn, run on this process's CPU threads: the fastest exact CPU
        paths measured here (BENCHMARKS.md)."""
        if device.type != "cpu" or self.precision != "fp32" or self.compile or self.cuda_graphs:
            raise ValueError(f"backend={backend!r} runs fp32 on the CPU (no compile, no CUDA graphs)")
        shape = self.example_shape or (1, self.source.in_chans, 224, 224)
        if backend == "ncnn":
            from ..ncnn_backend import NcnnEngine

            return NcnnEngine(self.source, input_shape=tuple(shape))
        runner = _OnnxRuntimeRunner(self.source, input_size=shape[-1])
        runner.session_for(shape[0])  # export now, not on the first call
        return runner

    def _example(self, device: torch.device) -> Tensor:
        shape = self.example_shape or (1, self.source.in_chans, 224, 224)
        x = torch.rand(shape, device=device, dtype=self.dtype)
        return self._prepare(x)

    def _prepare(self, x: Tensor) -> Tensor:
        x = x.to(device=self.device, dtype=self.dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: Tensor) -> Tensor:
        with torch.inference_mode():
            return self._run(self._prepare(x)).float()

    def train(self, mode: bool = True) -> "InferenceModel":
        if mode:
            raise RuntimeError("InferenceModel is eval-only; optimize(model, mode='train') for training")
        return super().train(False)

    # state_dict is the source's, without a "source." prefix.
    def state_dict(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        return self.source.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):  # type: ignore[override]
        result = self.source.load_state_dict(state_dict, strict=strict, assign=assign)
        self.rebuild()
        return result


class _OnnxRuntimeRunner:
    """Batches of one run in a graph exported for batch 1, other batches in one exported
    with a symbolic batch: ONNX Runtime plans the fixed shape better (measured at 224 px on
    the 2-core CPU: 15.3-16.5 ms vs 18.3-18.4 ms at batch 1). Each graph is exported on first
    need (a few seconds)."""

    def __init__(self, source: GoogLeNet, input_size: int) -> None:
        self.source = source
        self.input_size = input_size
        self.sessions: dict[bool, Callable[[Tensor], Tensor]] = {}  # dynamic batch? -> session

    def session_for(self, batch: int) -> Callable[[Tensor], Tensor]:
        dynamic = batch != 1
        if dynamic not in self.sessions:
            from ..export import export_metadata, inference_network, open_in_onnxruntime

            size = self.input_size
            meta = export_metadata(inference_network(self.source), input_size=size, resize=size)
            self.sessions[dynamic] = open_in_onnxruntime(self.source, dynamic, meta, threads=torch.get_num_threads())
        return self.sessions[dynamic]

    def __call__(self, x: Tensor) -> Tensor:
        return self.session_for(x.shape[0])(x)


def optimize(
    model: GoogLeNet,
    device: str | torch.device | None = None,
    mode: str = "inference",
    *,
    precision: str = "fp32",
    channels_last: bool = True,
    compile: bool = False,
    compile_mode: str | None = None,
    cuda_graphs: bool = False,
    backend: str = "auto",
    example_shape: tuple[int, ...] | None = None,
) -> nn.Module:
    """The fastest exact form of `model` for `mode` on `device`.

    mode="train": fuses each Inception's input 1x1 convs in place, moves the model to
      `device` (channels_last), optionally compiles it in place (`model.compile`), and
      returns the same object. Use bf16 autocast around forward/loss for bf16 training.
    mode="inference": returns an InferenceModel (see its doc). precision "bf16" stores
      the folded weights in bf16 (CUDA; on CPU bf16 is not exact). `example_shape` is the
      input shape the CPU oneDNN weights are laid out for (default 1 x C x 224 x 224);
      other shapes still work. `cuda_graphs` replays each input shape as one CUDA graph.
    backend (inference): "auto" (oneDNN on x86 CPUs in fp32, else eager), "mkldnn", "eager",
      or "onnxruntime": the model's ONNX export in an ONNX Runtime session (CPU, fp32, needs
      the `onnx` extra; inputs of example_shape's height and width, any batch), or "ncnn":
      the folded network converted by pnnx and run by ncnn with Winograd 3x3 convolutions
      (CPU, fp32, needs the `ncnn` extra; same input rule) -- the fastest exact CPU path at
      batch 1 here. Both cost an export (seconds) at every (re)build.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if not isinstance(model, GoogLeNet):
        raise TypeError("optimize() takes a GoogLeNet made by googlenet.create_model")
    if device is not None:
        model = model.to(device)
    if mode == "train":
        fuse_inception_modules(model)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if compile:
            model.compile(mode=compile_mode)
        return model
    return InferenceModel(
        model,
        precision=precision,
        channels_last=channels_last,
        backend=backend,
        compile=compile,
        compile_mode=compile_mode,
        cuda_graphs=cuda_graphs,
        example_shape=example_shape,
    )
