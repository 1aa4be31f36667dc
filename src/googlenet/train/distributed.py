"""Data-parallel training across processes with torch.distributed (DistributedDataParallel).

Launch with torchrun (one machine or several) or with `googlenet train --nproc N` (one
machine): each process trains on its own share of every global batch, gradients are
averaged by DDP, and only rank 0 writes files. The backend follows the device: NCCL for
CUDA, gloo for the CPU. Every collective has a timeout (`dist_timeout`, seconds), so a
stalled process ends the job with an error instead of a silent hang; a process that
dies is noticed by torchrun, which stops the others and exits non-zero.

    torchrun --nproc_per_node 4 -m googlenet train --dataset cifar10 ...
    googlenet train --nproc 4 --dataset cifar10 ...
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import RunError, UserError, first_line
from ..fileio import atomic_write
from .loop import Process
from .recipes import TrainConfig

# Test hook: "RANK:STEP" makes that rank exit abruptly (os._exit(1)) after that many training
# steps, to check that the whole job then ends non-zero in bounded time; "RANK:STEP:sigterm" (or sigint)
# makes it send itself SIGTERM instead (the other ranks are not signalled), to check that
# every rank still stops at the same step with a checkpoint.
FAIL_HOOK_ENV = "GOOGLENET_TEST_FAIL_AT"
# Set by `--nproc`: the file where rank 0 leaves a requested stop's exit code and message
# (every process then exits 0, so torchrun does not report the stop as a crash).
STOP_REPORT_ENV = "GOOGLENET_STOP_REPORT"


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun (or any launcher setting its env variables)."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1")) if launched_by_torchrun() else 1


def env_rank() -> int:
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


# ------------------------------------------------------------------ the process
@dataclass
class DistributedProcess(Process):
    """A rank of an initialised process group: DDP wrapping and collectives for the loop."""

    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    sync_bn: bool = False
    timeout_s: float = 120.0

    def wrap_model(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        if self.sync_bn:
            convert_sync_batchnorm(model, self.device)
        _install_fail_hook(model, self.rank)
        device_ids = [self.device.index if self.device.index is not None else self.local_rank] \
            if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def gather_cat(self, tensor: Tensor) -> Tensor:
        """Every rank's tensor concatenated in rank order. Ranks may hold different lengths
        (the last evaluation shard is shorter): pad to the longest, gather, trim."""
        length = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
        lengths = [torch.zeros_like(length) for _ in range(self.world_size)]
        dist.all_gather(lengths, length)
        longest = int(max(int(n) for n in lengths))
        padded = tensor.new_zeros((longest, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([part[: int(n)] for part, n in zip(parts, lengths)])

    def broadcast_object(self, value: Any) -> Any:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.device.type == "cuda":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager:
        # Gradient accumulation: skip DDP's all-reduce on all micro-batches but the last.
        return model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()


# ------------------------------------------------------------------ SyncBatchNorm
class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is also a sum over ranks: each rank's input then gets
    the gradient of every rank's loss (d sum_r L_r / d x), as inside one big batch."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        total = grad.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """Batch norm with statistics over the global batch, on any device (torch's
    nn.SyncBatchNorm runs on GPUs only): per-channel sums and sums of squares are
    all-reduced (differentiably), then normalised as BatchNorm2d would the whole batch."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        # Two passes (mean, then the mean squared deviation): E[x^2] - mean^2 in one pass
        # loses the variance to cancellation where a channel's mean dwarfs its spread.
        channels = x.shape[1]
        x32 = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # statistics in fp32 at least
        local_count = torch.full((1,), x32.numel() / channels, device=x.device, dtype=x32.dtype)
        sums = _AllReduceSum.apply(torch.cat([x32.sum((0, 2, 3)), local_count]))
        count = sums[-1]
        mean = sums[:channels] / count
        centred = x32 - mean[None, :, None, None]
        var = _AllReduceSum.apply((centred * centred).sum((0, 2, 3))) / count  # biased, as BN normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm2d of `model` (in place) synchronise its statistics across ranks.

    The modules keep their parameters and buffers (same state_dict keys), so checkpoints
    and saved weights load into a plain model."""
    if device.type == "cuda":
        for name, child in list(model.named_children()):
            model.add_module(name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        return model
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            # Same state, forward that syncs: swapping the class keeps parameters, buffers,
            # hooks and references (the optimizer's, the EMA copy's) intact.
            module.__class__ = CPUSyncBatchNorm
    return model


def _install_fail_hook(model: nn.Module, rank: int) -> None:
    spec = os.environ.get(FAIL_HOOK_ENV)
    if not spec:
        return
    fail_rank, fail_step, *how = spec.split(":")
    if int(fail_rank) != rank:
        return
    calls = {"train": 0}

    def hook(module: nn.Module, inputs: Any) -> None:
        if module.training:
            calls["train"] += 1
            if calls["train"] == int(fail_step) + 1 and how in (["sigterm"], ["sigint"]):
                os.kill(os.getpid(), signal.SIGTERM if how == ["sigterm"] else signal.SIGINT)
            elif calls["train"] > int(fail_step) and not how:
                print(f"rank {rank}: {FAIL_HOOK_ENV}={spec}: exiting abruptly (test hook)", file=sys.stderr,
                      flush=True)
                os._exit(1)

    model.register_forward_pre_hook(hook)


# ------------------------------------------------------------------ session
def _collective_failure(error: BaseException) -> bool:
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        word in text for word in ("Gloo", "gloo", "NCCL", "Connection closed", "Connection reset", "timed out",
                                  "Timed out"))


@contextlib.contextmanager
def distributed_session(config: TrainConfig | None) -> Iterator[Process]:
    """The `Process` for this run: a DistributedProcess under torchrun with more than one
    process (the process group set up from torchrun's env variables, torn down on exit),
    else the single-process default (`config` may then be None)."""
    world_size = env_world_size()
    if world_size <= 1 or config is None:
        yield Process()
        return
    from ..device import resolve_device

    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    device = resolve_device(config.device)
    if device.type == "cuda":
        if device.index is not None and local_world > 1:
            raise UserError(f"--device {config.device} puts every process on one GPU; with several processes "
                            "per machine use --device cuda (process N takes GPU N)")
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"process {local_rank} on this machine has no GPU ({torch.cuda.device_count()} "
                            "visible); start at most one process per GPU (--nproc_per_node)")
        torch.cuda.set_device(local_rank)  # "cuda" now means this process's GPU everywhere
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    timeout = float(config.dist_timeout)
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    except Exception as e:  # rendezvous or network failure
        raise RunError(f"process {rank}: cannot join the process group ({backend}): "
                       f"{first_line(e, 300)}; check --rdzv-endpoint / MASTER_ADDR and the network") from None
    process = DistributedProcess(rank=rank, world_size=world_size, local_rank=local_rank, device=device,
                                 sync_bn=config.sync_bn, timeout_s=timeout)
    try:
        yield process
    except Exception as e:
        if not _collective_failure(e):
            raise
        raise RunError(f"process {rank} of {world_size}: a collective operation failed ({first_line(e, 300)}); "
                       f"another process died (see its error above) or stalled longer than "
                       f"dist_timeout={timeout:g}s") from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ------------------------------------------------------------------ batch bookkeeping
def global_batch(config: TrainConfig, world_size: int) -> int:
    """Images per optimizer step over the whole job."""
    return config.batch_size * world_size * config.accum_steps


def rescale_for_world_size(config: TrainConfig, saved_world_size: int, world_size: int) -> TrainConfig:
    """The resumed run's config on `world_size` processes. The global batch stays the same,
    and so do the learning rate, the schedule and the data stream (indexed by global step).
    The per-process batch stays too where the accumulation steps can absorb the change
    (8 GPUs -> 4: twice the accumulation, same memory per GPU, same batch-norm batches);
    otherwise the per-process batch changes."""
    if saved_world_size == world_size:
        return config
    micro_batches = saved_world_size * config.accum_steps  # of batch_size images, per step, whole job
    if micro_batches % world_size == 0:
        return dataclasses.replace(config, accum_steps=micro_batches // world_size)
    target = global_batch(config, saved_world_size)
    if target % world_size:
        raise UserError(f"the run was trained with a global batch of {target} ({saved_world_size} processes); "
                        f"it cannot be split evenly over {world_size} processes; resume with a number of "
                        "processes that divides it")
    return dataclasses.replace(config, batch_size=target // world_size, accum_steps=1)


# ------------------------------------------------------------------ launcher
def report_stop(stop: RunError, rank: int) -> bool:
    """Under `--nproc`: hand a requested stop to the launcher (rank 0 writes its exit code and
    message) and tell the caller to exit 0. False where no launcher of ours is waiting."""
    report = os.environ.get(STOP_REPORT_ENV)
    if not report or env_world_size() <= 1:
        return False
    if rank == 0:
        atomic_write(report, lambda tmp: Path(tmp).write_text(f"{stop.exit_code}\n{stop}\n"))
    return True


def _read_stop_report(path: str) -> tuple[int, str] | None:
    """(exit code, message) that rank 0 left for the launcher; None if there is none (or it
    was cut short: rank 0 killed while writing it)."""
    try:
        code, message = Path(path).read_text().split("\n", 1)
        return int(code), message.strip()
    except (OSError, ValueError):
        return None


def _torchrun_has_option(option: str) -> bool:
    """Whether this torch's torchrun takes `option` (torch >= 2.5 is supported; options came later)."""
    from torch.distributed.run import get_args_parser

    return any(option in action.option_strings for action in get_args_parser()._actions)


def launch_local(nproc: int, train_args: list[str]) -> int:
    """Run `googlenet train <train_args>` in `nproc` processes on this machine with torchrun's
    launcher (standalone rendezvous on a free local port), in this process so that its
    outcome becomes one line: a requested stop (Ctrl-C, SIGTERM: torchrun passes it on and
    waits for the checkpoint) returns 130/143 with rank 0's message; a failed process returns
    its exit code with a pointer to its error above, instead of torchrun's traceback dump."""
    import tempfile

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {nproc}")
    options = ["--standalone", f"--nproc_per_node={nproc}"]
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN and _torchrun_has_option("--signals-to-handle"):
        # Started under nohup: the job must outlive its terminal. torchrun's agent would take
        # SIGHUP over (and pass it on to the processes); leave it ignored, as nohup set it.
        options.append("--signals-to-handle=SIGTERM,SIGINT,SIGQUIT")
    launch = parse_args([*options, "-m", "googlenet", "train", *train_args])
    saved_env = dict(os.environ)
    # torchrun's agent installs its own signal handlers and never puts ours back.
    saved_handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
    # Its warnings ("Received 2 death signal, shutting down workers", ...) narrate what our own
    # lines say; its errors (a process that failed) still show. Each of its modules' loggers
    # has its own level, so each is raised.
    elastic_logs = {log: log.level for name, log in logging.root.manager.loggerDict.items()
                    if name.startswith("torch.distributed.elastic") and isinstance(log, logging.Logger)}
    for log in elastic_logs:
        log.setLevel(max(log.level, logging.ERROR))
    failed = ""
    with tempfile.TemporaryDirectory(prefix="googlenet-nproc-") as folder:
        report = os.path.join(folder, "stopped")
        os.environ[STOP_REPORT_ENV] = report
        # torchrun sets OMP_NUM_THREADS=1 with a warning; share the cores out explicitly instead.
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        try:
            run(launch)
            code = 0
        except SignalException as signalled:  # to this process; the workers got it too and have ended
            code = 128 + int(signalled.sigval)
        except ChildFailedError as error:
            rank, failure = error.get_first_failure()
            # A negative exit code is a death by that signal (e.g. -9: killed, out of memory?).
            code = failure.exitcode if failure.exitcode > 0 else 128 + abs(failure.exitcode or 1)
            failed = f"process {rank} exited with code {failure.exitcode}"
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
            for signum, handler in saved_handlers.items():
                if handler is not None:  # None: set outside Python, cannot be put back from here
                    signal.signal(signum, handler)
            for log, level in elastic_logs.items():
                log.setLevel(level)
        stopped = _read_stop_report(report)
    if stopped is not None:  # stopped on request, checkpoint saved
        print(f"googlenet train: {stopped[1]}", file=sys.stderr)
        code = code if failed else stopped[0]
    if failed:
        print(f"googlenet train: error: the {nproc}-process job failed ({failed}); its error is shown above",
              file=sys.stderr)
    elif code and stopped is None:
        print(f"googlenet train: the {nproc}-process job was interrupted (exit {code})", file=sys.stderr)
    return code


__all__ = ["CPUSyncBatchNorm", "DistributedProcess", "convert_sync_batchnorm", "distributed_session",
           "global_batch", "launch_local", "launched_by_torchrun", "report_stop", "rescale_for_world_size"]
