"""The training forward and backward replayed as CUDA graphs (one GPU, one process).

At 28 px a GoogLeNet training step is ~800 small kernels; launched one at a time from
Python the GPU waits on the host between them. `torch.cuda.make_graphed_callables`
records the forward and the backward once and replays each as a single launch. Only
those two are graphed: the loss, the optimizer step, the weight average and the
NaN/stop flags stay eager, so the learning-rate schedule, checkpoints and guards work
unchanged, and a batch of another shape (or a model in eval mode) takes the eager path.
Only for data resident on the GPU (Fashion-MNIST, CIFAR): a DataLoader's worker threads
would make CUDA calls during the recording.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import Tensor, nn

from ..models import GoogLeNetOutputs
from . import guard


def unavailable_reason(config, device: torch.device, world_size: int, resident_data: bool = True) -> str | None:
    """Why the training step cannot be graphed here (None: it can)."""
    if not config.cuda_graph:
        return "off (--set cuda_graph=false)"
    if device.type != "cuda":
        return "not on a CUDA device"
    if not resident_data:
        # A DataLoader's pin-memory thread makes CUDA calls while the graph is recorded,
        # which breaks the recording and then the loader.
        return "image-folder data (loader threads)"
    if world_size > 1:
        return "several processes (DDP all-reduces during the backward)"
    if config.accum_steps > 1:
        # The backward graph rewrites the same gradient buffers at every replay, which
        # the parameters' .grad may alias: micro-batches would not add up.
        return "gradient accumulation"
    if config.compile:
        return "torch.compile manages its own graphs"
    return None


class _TrainForward(nn.Module):
    """The model behind a wrapper: make_graphed_callables replaces the forward of the
    module it is given, and the model's own forward must stay for evaluation and for
    batches of other shapes. Returns a flat tuple (what the graph records)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.model(x)
        return tuple(out) if isinstance(out, GoogLeNetOutputs) else (out,)


class GraphedForward:
    """Calls the recorded forward (whose backward is also a graph) for batches shaped like
    the sample, and the model directly for any other batch."""

    def __init__(self, model: nn.Module, sample: Tensor, dtype: torch.dtype | None,
                 make_graphed: Callable | None = None) -> None:
        make_graphed = make_graphed or torch.cuda.make_graphed_callables
        self.model = model
        self.shape, self.dtype = sample.shape, sample.dtype
        # Capturing runs a few warm-up forwards, which would move the batch-norm running
        # statistics by extra momentum steps: put them back afterwards.
        buffers = guard.buffers_snapshot(model)
        # They also draw dropout masks: put the random stream back too, so that a run and its
        # --resume (which records again, at another step) draw the same masks afterwards.
        on_cuda = sample.device.type == "cuda"
        rng = torch.cuda.get_rng_state(sample.device) if on_cuda else torch.get_rng_state()
        # Autocast's weight cache would freeze the bf16 copies of the weights inside the
        # graph (make_graphed_callables refuses it): cast inside the graph at every replay.
        cast = (torch.autocast(sample.device.type, dtype=dtype, cache_enabled=False)
                if dtype is not None else contextlib.nullcontext())
        # The recording stream is made on the current device: make that the sample's (cuda:1 ...),
        # else the work runs unrecorded and every replay would return the recording step's results.
        on_device = torch.cuda.device(sample.device) if on_cuda else contextlib.nullcontext()
        try:
            with on_device, cast:
                self.graphed = make_graphed(_TrainForward(model), (sample.detach().clone(),))
        finally:
            guard.restore_buffers(model, buffers)
            if on_cuda:
                torch.cuda.set_rng_state(rng, sample.device)
            else:
                torch.set_rng_state(rng)

    def matches(self, x: Tensor) -> bool:
        # Strides may differ: the replay copies the batch into the recorded input first.
        return x.shape == self.shape and x.dtype == self.dtype

    def __call__(self, x: Tensor):
        if not self.matches(x) or not self.model.training:  # the recording is a training-mode step
            return self.model(x)
        out = self.graphed(x)
        return GoogLeNetOutputs(*out) if len(out) == 3 else out[0]
