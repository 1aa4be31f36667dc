"""The training loop: plan the schedule (fixed epochs or a wall-clock budget), train,
evaluate, log, checkpoint, and write the final weights and plots.

Multi-process training plugs in through `Process` (rank, world size, gather, model
wrapping): only the main process prints and writes files; every process trains on
its share of each global batch (see data/gpu_loader.py).
"""
from __future__ import annotations

import contextlib
import csv
import functools
import io
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.gpu_loader import TensorLoader
from ..errors import RunError, UserError, first_line
from ..fileio import atomic_write
from ..models import GoogLeNetOutputs, check_input_size, googlenet_loss
from ..progress import progress
from . import checkpoint as ckpt
from . import graphed, guard
from .ema import WeightAverage
from .budget import REPLAN_AFTER_EPOCH, BudgetPlanning, Plan, format_figure
from .recipes import TrainConfig, config_from_dict, save_config
from .setup import LRSchedule, autocast_dtype, build_loaders, build_model, build_optimizer, freeze_until

METRICS_FIELDS = ("epoch", "step", "images", "train_loss", "train_acc", "test_loss", "test_top1", "test_top5",
                  "test_images", "lr", "img_per_s", "epoch_s", "elapsed_s")


@dataclass
class Process:
    """This process's place in a (possibly) distributed job. Single-process defaults;
    a distributed launcher subclasses it (all_reduce / gather / wrap_model)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return model  # DistributedDataParallel(model) when world_size > 1

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        return tensor

    def gather_cat(self, tensor: Tensor) -> Tensor:
        return tensor  # concatenation of every rank's tensor, in rank order

    def barrier(self) -> None:
        pass

    def broadcast_object(self, value: Any) -> Any:
        return value  # rank 0's value, on every rank

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # DDP: no gradient all-reduce (accumulation micro-batches)


@dataclass
class EpochTest:
    """One test during training, in percent (googlenet.evaluate.EvalResult holds fractions)."""
    top1: float  # %
    top5: float  # %
    loss: float
    images: int
    predictions: Tensor | None = None
    targets: Tensor | None = None


@dataclass
class TrainResult:
    run_dir: Path
    weights: Path
    top1: float
    top5: float
    test_images: int
    seconds: float
    history: list[dict] = field(default_factory=list)


def train(config: TrainConfig, out: str | Path | None = None, resume: str | Path | None = None,
          process: Process | None = None, started_at: float | None = None,
          notes: Iterable[str] = ()) -> TrainResult:
    """Train (or resume) a run; returns its final test accuracy and paths. `notes` are printed
    under the run's header line (after the setup's checks, so a rejected command prints none)."""
    process = process or Process()
    payload = None
    if process.is_main and (resume is not None or out is not None):  # before this process takes the lock
        guard.refuse_unusable_run(resume if resume is not None else out, resume=resume is not None)
    if resume is not None:
        payload = ckpt.load_checkpoint(resume)
        config = config_from_dict(payload["config"])
        from .distributed import rescale_for_world_size

        config = rescale_for_world_size(config, int(payload.get("world_size", 1)), process.world_size)
        run_dir = ckpt.checkpoint_path(resume).parent  # RUN or RUN/last.pt -> RUN
    else:
        run_dir = Path(out) if out else Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
        run_dir = Path(process.broadcast_object(str(run_dir)))  # one folder, named by rank 0
        if (run_dir / ckpt.LAST).exists():
            finished = ckpt.finished_weights(run_dir)
            if finished is not None:
                raise UserError(f"{run_dir} already holds a finished run (its model: {finished}); pick another "
                                f"--out, or train on from it with --weights {finished}")
            raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                            "or pick another --out")
        if (run_dir / ckpt.RUN_WEIGHTS).exists():  # weights put there by hand: the run would overwrite them
            raise UserError(f"{run_dir} already holds {ckpt.RUN_WEIGHTS} (not from a run here); training would "
                            "overwrite it; pick another --out")
    # One process trains into a folder at a time (the lock goes with the process, even on SIGKILL).
    with guard.RunLock(run_dir) if process.is_main else contextlib.nullcontext():
        if resume is not None and process.is_main:  # half-written files of a killed run (checkpoint-sized)
            guard.remove_stale_temp_files(run_dir)
        trainer = Trainer(config, run_dir, process, payload, started_at, notes)
        try:
            return trainer.fit()
        except Exception as e:  # a full disk or unwritable run folder: one line, not a traceback
            failed = guard.write_error(e, run_dir)
            if failed is None:
                raise
            raise failed from None


class Trainer(BudgetPlanning):
    def __init__(self, config: TrainConfig, run_dir: Path, process: Process, payload: dict | None = None,
                 started_at: float | None = None, notes: Iterable[str] = ()) -> None:
        from ..device import resolve_device

        self.config, self.run_dir, self.process = config, run_dir, process
        self.notes = list(notes)
        self.started = started_at if started_at is not None else time.perf_counter()
        self.device = resolve_device(config.device)
        self.dtype = autocast_dtype(config.precision, self.device)
        seed_everything(config.seed + process.rank)

        # Data first: the model's class count and channels come from it.
        self.train_loader, self.test_loader, self.info = build_loaders(config, self.device, None, process.rank,
                                                                       process.world_size)
        model = build_model(config, len(self.info.class_names), self.info.in_chans, say=self.say,
                            input_size=self.info.input_size, class_names=self.info.class_names)
        if model.in_chans != self.info.in_chans:  # grey data into an RGB model: repeat the channel
            self.train_loader, self.test_loader, self.info = build_loaders(
                config, self.device, model.in_chans, process.rank, process.world_size)
        check_input_size(model, self.info.input_size, model.in_chans, model.model_name)
        # The whole dataset sits on the device as tensors (TensorLoader), augmented a batch at a
        # time; otherwise a DataLoader decodes image files in worker processes.
        self.resident_data = isinstance(self.train_loader, TensorLoader)
        self.frozen = freeze_until(model, config.freeze)
        if self.frozen:
            self.say(f"frozen: {self.frozen[0]} .. {self.frozen[-1]} (weights and batch-norm statistics)")
            if not config.weights:  # a linear probe on random features: almost surely a forgotten --weights
                self.say(f"note: no --weights, so the frozen layers keep their random initialisation and only "
                         f"what follows {config.freeze} learns; --freeze is for fine-tuning (--weights FILE|imagenet)")
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=memory_format)
        self.step_model = process.wrap_model(torch.compile(self.model) if config.compile else self.model)
        self.optimizer = build_optimizer(self.model, config)
        self.schedule = LRSchedule(config, total_steps=10 ** 9, steps_per_epoch=self.train_loader.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.ema = WeightAverage(self.model, config.ema_decay) if config.ema else None
        self.criterion = functools.partial(F.cross_entropy, label_smoothing=config.label_smoothing)

        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.history: list[dict] = []
        self.best_top1 = -1.0
        self.plan: Plan | None = None
        self.budget_eval_rate: float | None = None  # test img/s, when this process planned a budget
        self.elapsed_before = 0.0  # seconds spent before a resume
        self._epoch_sums = self._zero_sums()
        self.tensorboard = None
        self.nan_guard = guard.NonFiniteGuard(config.on_nan, config.lr)
        self.stop_signals = guard.StopSignals(self.run_dir)  # SIGINT/SIGTERM/SIGHUP: checkpoint, then stop
        self.stop_agreed = False  # every process has seen a stop request (the same step on all)
        self.late_flags = guard.LateRead()  # each step's (loss, stop votes), read a step late
        # Forward/backward as CUDA graphs, recorded on the first full batch (None: not yet or not here).
        self.graph_off = graphed.unavailable_reason(config, self.device, process.world_size,
                                                    resident_data=self.resident_data)
        self.graphed: graphed.GraphedForward | None = None
        if payload is not None:
            self._restore(payload)

    # ---------------------------------------------------------------- output
    def say(self, message: str) -> None:
        if self.process.is_main:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stdout)
            sys.stdout.flush()

    def _autocast(self) -> torch.autocast:
        """The run's mixed precision (bf16 autocast), or a no-op in fp32."""
        return torch.autocast(self.device.type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    # ---------------------------------------------------------------- the run
    def fit(self) -> TrainResult:
        c = self.config
        if self.process.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(c, self.run_dir / "config.yaml")
            self._open_tensorboard()
        precision = {None: "fp32", torch.bfloat16: "bf16"}.get(self.dtype, str(self.dtype))
        self.say(f"train {self.model.model_name} on {self.info.name} ({self.info.train_size} train / "
                 f"{self.info.test_size} test images, {len(self.info.class_names)} classes, "
                 f"{self.info.input_size}px) | recipe {c.recipe} | {self.device} {precision} | "
                 f"global batch {self.train_loader.global_batch} ({c.batch_size}/process x "
                 f"{self.process.world_size} processes x {c.accum_steps} accumulation), lr {c.lr:g} | "
                 f"run folder {self.run_dir}")
        for note in self.notes:
            self.say(note)
        final: EpochTest | None = None
        with self.stop_signals:
            if self.plan is None:
                self.plan = self._plan_budget() if c.budget else Plan.fixed(
                    c.epochs, self.train_loader.steps_per_epoch, c.eval_subset)
                self.plan = self.process.broadcast_object(self.plan)  # every rank takes rank 0's timing
            self.schedule.follow(self.plan)
            self._apply_light_augment()
            while self.epoch < self.plan.epochs:
                final = self._run_epoch()
        if final is None or final.predictions is None:
            final = self.evaluate(self.eval_model, None, collect=True)
        if c.tta_flip:
            flipped = self.evaluate(self.eval_model, None, collect=True, tta_flip=True)
            self.say(f"test-time flip averaging: top-1 {flipped.top1:.2f}% (without: {final.top1:.2f}%)")
        return self._finish(final)

    def _run_epoch(self) -> EpochTest | None:
        plan, c = self.plan, self.config
        epoch = self.epoch
        end = plan.epoch_ends[epoch]
        self._train_steps(epoch, end - self.step, desc=f"epoch {epoch + 1}/{plan.epochs}")
        if self._stopping() and self.step < end:  # asked to stop mid-epoch
            self._save_checkpoints(best=False)
            self._stop_after_save()
        sums = self._epoch_sums
        images = int(sums["images"])
        train_loss = float(sums["loss"]) / max(1, images)
        if not math.isfinite(train_loss):
            raise RunError(f"training diverged (loss {train_loss}) in epoch {epoch + 1}; lower the learning "
                           f"rate (--lr, now {c.lr})")
        last = epoch + 1 == plan.epochs
        result = None
        if last or (epoch + 1) % c.eval_every == 0:
            limit = None if last else plan.eval_subset  # the last epoch's test is the final one
            result = self.evaluate(self.eval_model, limit, collect=limit is None)
        row = {
            "epoch": epoch + 1, "step": self.step, "images": images * self.process.world_size,
            "train_loss": round(train_loss, 5), "train_acc": round(100 * float(sums["correct"]) / max(1, images), 3),
            "test_loss": round(result.loss, 5) if result else "", "test_top1": round(result.top1, 3) if result else "",
            "test_top5": round(result.top5, 3) if result else "", "test_images": result.images if result else "",
            "lr": f"{self.scheduler.get_last_lr()[0]:.6g}",
            "img_per_s": round(images * self.process.world_size / max(sums["seconds"], 1e-9), 1),
            "epoch_s": round(time.perf_counter() - sums["started"], 2),
            "elapsed_s": round(self.elapsed(), 1),
        }
        self.history.append(row)
        self.epoch += 1
        self._epoch_sums = self._zero_sums()
        improved = result is not None and result.top1 > self.best_top1
        if improved:
            self.best_top1 = result.top1
        self._log_epoch(row)
        if self.epoch == REPLAN_AFTER_EPOCH and self.budget_eval_rate is not None and plan.epochs >= 4:
            # epoch_s spans the previous epoch's checkpoint to this epoch's test: one whole cycle.
            self._replan_budget(sums["seconds"], max(0.0, row["epoch_s"] - sums["seconds"]))
        if self.nan_guard.skipped:
            self.say(f"note: {self.nan_guard.skipped} step(s) skipped so far: NaN/Inf loss (--on-nan skip)")
        self._save_checkpoints(best=improved)
        if self._agree_to_stop() and self.epoch < plan.epochs:
            self._stop_after_save()
        return result if result is not None and result.predictions is not None else None

    @staticmethod
    def _zero_sums() -> dict[str, Any]:
        # Per-epoch training totals; "seconds" counts training only, "started" the whole epoch.
        return {"loss": 0.0, "correct": 0, "images": 0, "seconds": 0.0, "started": time.perf_counter()}

    def _train_steps(self, epoch: int, steps: int, desc: str, show: bool = True) -> None:
        """`steps` optimizer steps from self.step, adding loss/accuracy to the epoch sums."""
        if steps <= 0:
            return
        started = time.perf_counter()
        model, c = self.step_model, self.config
        self.model.train()
        for name in self.frozen:
            getattr(self.model, name).eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        # A bar on a terminal; in a log file (nohup, CI) a plain line a minute, so a long epoch
        # does not look like a hang.
        bar = progress(steps * self.train_loader.global_batch, desc, enabled=show and self.process.is_main,
                       say=self.say)
        first_step = self.step
        # --on-nan stop reads each step's flags a step late (the host never waits for the GPU);
        # skip must know before the update, so it waits every step.
        read_late = self.nan_guard.policy == "stop"
        for x_step, y_step in self.train_loader.train_batches(self.step, steps, epoch):
            self.optimizer.zero_grad(set_to_none=True)
            # --on-nan skip: a NaN forward pass has already updated the batch-norm statistics
            buffers = guard.buffers_snapshot(self.model) if self.nan_guard.policy == "skip" else None
            step_loss = torch.zeros((), device=self.device)
            step_correct = torch.zeros((), device=self.device, dtype=torch.long)
            micro = list(zip(x_step.chunk(c.accum_steps), y_step.chunk(c.accum_steps)))
            for i, (x, y) in enumerate(micro):
                # Gradients add up over micro-batches; DDP all-reduces them once, on the last.
                sync = contextlib.nullcontext() if i == len(micro) - 1 else self.process.no_sync(model)
                forward = self._training_forward(x) or model
                with sync:
                    with self._autocast():
                        outputs = forward(x)
                        loss = googlenet_loss(outputs, y, self.criterion, c.aux_weight)
                    (loss * (len(y) / len(y_step))).backward()
                logits = outputs.logits if isinstance(outputs, GoogLeNetOutputs) else outputs
                step_loss += loss.detach().float() * len(y)
                step_correct += (logits.detach().argmax(1) == y).sum()
            flags = self._step_flags(step_loss)
            if read_late:
                self._apply_flags(self.late_flags.take())  # the previous step's: raises on NaN/Inf
                self.late_flags.put(flags, (self.step, epoch))
                allowed = True
            else:
                allowed = self._apply_flags((flags.tolist(), (self.step, epoch)), buffers)
            if allowed:
                self.optimizer.step()
                if self.ema is not None:
                    self.ema.update(self.model)
                loss_sum += step_loss
                correct += step_correct
                seen += len(y_step)
            self.scheduler.step()
            self.step += 1
            # The epoch's ETA alone hides how long a many-epoch run is (hours on a CPU).
            run_left = show and self._run_time_left((time.perf_counter() - started) / (self.step - first_step))
            if run_left:
                bar.set_postfix_str(f"{run_left} left in the whole run", refresh=False)
            bar.update(len(y_step) * self.process.world_size)
            if self._stopping():
                break
        bar.close()
        if read_late:
            self._apply_flags(self.late_flags.take())  # the last step's, before anything is saved
        sums = self._epoch_sums
        sums["loss"] += float(self.process.all_reduce_sum(loss_sum)) / self.process.world_size
        sums["correct"] += int(self.process.all_reduce_sum(correct)) // self.process.world_size
        sums["images"] += seen
        sums["seconds"] += time.perf_counter() - started

    def _run_time_left(self, step_s: float) -> str | None:
        """'~2.1 h' of training left in the whole run at `step_s` per step, or None when this is
        the last epoch (its own ETA says it all). Tests and checkpoints are not counted."""
        if self.epoch + 1 >= self.plan.epochs:
            return None
        seconds = (self.plan.total_steps - self.step) * step_s
        return f"~{seconds / 60:.1f} min" if seconds < 90 * 60 else f"~{seconds / 3600:.1f} h"

    def _training_forward(self, x: Tensor) -> graphed.GraphedForward | None:
        """The graphed forward where it applies; recorded on the first call (a few seconds)."""
        if self.graphed is None and self.graph_off is None:
            started = time.perf_counter()
            try:
                self.graphed = graphed.GraphedForward(self.model, x, self.dtype)
            except Exception as error:  # noqa: BLE001 -- a capture problem must not cost the run
                self.graph_off = f"recording failed: {first_line(error)}"
                self.say(f"note: CUDA graphs off ({self.graph_off}); training without them")
            else:
                self.say(f"CUDA graphs: forward and backward of each {tuple(x.shape)} batch recorded "
                         f"({time.perf_counter() - started:.1f} s); --set cuda_graph=false turns them off")
        return self.graphed

    def _step_flags(self, step_loss: Tensor) -> Tensor:
        """(summed loss, stop votes) of this step over every process: one small all-reduce, no sync."""
        # new_full fills on the device; torch.tensor(..., device="cuda") would be a
        # synchronising host-to-device copy per step.
        stop_flag = step_loss.new_full((), self.stop_signals.vote(), dtype=torch.float32)
        return self.process.all_reduce_sum(torch.stack([step_loss.float(), stop_flag]))

    def _apply_flags(self, read: tuple[list, tuple[int, int]] | None, buffers: list[Tensor] | None = None) -> bool:
        """The --on-nan policy for the step the flags came from, and any stop vote; every process
        reads the same all-reduced flags at the same step, so they all stop together.
        True: that step's update may be (or stay) applied."""
        if read is None:
            return True
        (loss_value, stop_votes), (step, epoch) = read
        if stop_votes:
            self._stop_voted(stop_votes)
        if self.nan_guard.allows_update(loss_value, step, epoch, self.run_dir / ckpt.LAST):
            return True
        if buffers is not None:
            guard.restore_buffers(self.model, buffers)
        self.optimizer.zero_grad(set_to_none=True)
        return False

    def _stopping(self) -> bool:
        """Stop at this step? With several processes only once all of them know (the flags read
        late), so they stop at the same step; a process alone stops at its own request."""
        return self.stop_agreed or (self.process.world_size == 1 and self.stop_signals.received is not None)

    def _agree_to_stop(self) -> bool:
        """At an epoch's end: has any process been asked to stop? (All of them answer alike.)"""
        if not self._stopping() and self.process.world_size > 1:
            asked = torch.tensor(self.stop_signals.vote(), device=self.device)
            votes = float(self.process.all_reduce_sum(asked))
            if votes > 0:
                self._stop_voted(votes)
        return self._stopping()

    def _stop_after_save(self) -> None:
        # No process may exit before rank 0's checkpoint is on disk: torchrun ends the
        # others as soon as one exits, which could cut that write short.
        self.process.barrier()
        raise self.stop_signals.stopped(self.step)

    def _stop_voted(self, votes: float) -> None:
        self.stop_agreed = True
        self.stop_signals.join(votes)  # a process not signalled itself reports what the others got

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module, limit: int | None, collect: bool = False,
                 tta_flip: bool = False) -> EpochTest:
        model.eval()
        num_classes = len(self.info.class_names)
        k = min(5, num_classes)
        totals = torch.zeros(4, device=self.device, dtype=torch.float64)  # loss, top1, top5, images
        predictions, targets = [], []
        # A full test set takes a minute on a CPU: a bar on a terminal, a line a minute in a log.
        images = self.info.test_size if limit is None else min(limit, self.info.test_size)
        bar = progress(images, "test", enabled=self.process.is_main, say=self.say)
        self.stop_signals.phase = f"test ({images} images)"  # what a stop request waits for now
        for x, y in self.test_loader.eval_batches(limit):
            bar.update(len(y) * self.process.world_size)  # each process tests its share
            with self._autocast():
                logits = model(x).float()
                if tta_flip:
                    probs = (logits.softmax(1) + model(x.flip(-1)).float().softmax(1)) / 2
                    logits = probs.log()
            top = logits.topk(k, dim=1).indices
            totals[0] += F.cross_entropy(logits, y, reduction="sum")
            totals[1] += (top[:, 0] == y).sum()
            totals[2] += (top == y[:, None]).any(1).sum()
            totals[3] += len(y)
            if collect:
                predictions.append(top[:, 0])
                targets.append(y)
        bar.close()
        self.stop_signals.phase = guard.StopSignals.phase
        totals = self.process.all_reduce_sum(totals)
        n = max(1.0, float(totals[3]))
        result = EpochTest(100 * float(totals[1]) / n, 100 * float(totals[2]) / n, float(totals[0]) / n,
                            int(totals[3]))
        if collect:
            empty = torch.empty(0, dtype=torch.long, device=self.device)
            result.predictions = self.process.gather_cat(torch.cat(predictions) if predictions else empty).cpu()
            result.targets = self.process.gather_cat(torch.cat(targets) if targets else empty).cpu()
        return result

    # ---------------------------------------------------------------- files
    def _log_epoch(self, row: dict) -> None:
        if not self.process.is_main:
            return
        test = (f"test {row['test_top1']:.2f}%/{row['test_top5']:.2f}% (top-1/top-5, {row['test_images']} imgs)"
                if row["test_top1"] != "" else "test -")
        self.say(f"epoch {row['epoch']}/{self.plan.epochs}  loss {row['train_loss']:.4f}  "
                 f"train {row['train_acc']:.2f}%  {test}  lr {float(row['lr']):.4g}  "
                 f"{format_figure(row['img_per_s'])} img/s  {row['epoch_s']:.0f}s")
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRICS_FIELDS)
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write(self.run_dir / "metrics.csv", lambda tmp: Path(tmp).write_text(buffer.getvalue()))
        if self.tensorboard is not None:
            for key in ("train_loss", "train_acc", "test_loss", "test_top1", "test_top5", "lr", "img_per_s"):
                if row[key] != "":
                    self.tensorboard.add_scalar(key, float(row[key]), row["epoch"])
            self.tensorboard.flush()

    def _open_tensorboard(self) -> None:
        if not self.config.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional extra
            self.say("note: --tensorboard needs the tensorboard package (pip install tensorboard); "
                     "skipping TensorBoard logs, metrics.csv is still written")
            return
        self.tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))

    def _checkpoint_payload(self) -> dict[str, Any]:
        return {
            "format": "googlenet-checkpoint/1",
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": ckpt.rng_state(),
            "epoch": self.epoch,
            "step": self.step,
            "plan": asdict(self.plan),
            "history": self.history,
            "best_top1": self.best_top1,
            "elapsed_s": self.elapsed(),
            "config": self.config.to_dict(),
            "world_size": self.process.world_size,
            "epoch_sums": {k: v for k, v in self._epoch_sums.items() if k != "started"},  # a mid-epoch stop
            "skipped_steps": self.nan_guard.skipped,
        }

    def _save_checkpoints(self, best: bool) -> None:
        if not guard.all_finite(self.model):  # every process holds the same weights: all stop here
            raise RunError(f"the weights hold NaN/Inf at step {self.step}; not saving them over the last good "
                           f"checkpoint in {self.run_dir}. Lower the learning rate (--lr, now {self.config.lr:g})")
        if not self.process.is_main:
            return
        payload = self._checkpoint_payload()
        ckpt.save_checkpoint(self.run_dir / ckpt.LAST, payload)
        if best:
            ckpt.save_best(self.run_dir, payload)

    def _restore(self, payload: dict) -> None:
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if self.ema is not None and payload.get("ema") is not None:
            self.ema.load_state_dict(payload["ema"])
        self.epoch, self.step = int(payload["epoch"]), int(payload["step"])
        self.plan = Plan(**payload["plan"])
        self.history = list(payload["history"])
        self.best_top1 = float(payload["best_top1"])
        self.elapsed_before = float(payload["elapsed_s"])
        self._epoch_sums.update(payload.get("epoch_sums") or {})
        self.nan_guard.skipped = int(payload.get("skipped_steps", 0))
        ckpt.set_rng_state(payload["rng"])
        ended = self.plan.epoch_ends[self.epoch - 1] if self.epoch > 0 else 0
        where = (f"after epoch {self.epoch} (step {self.step})"
                 if self.step == ended or self.epoch >= self.plan.epochs
                 else f"part-way through epoch {self.epoch + 1} (step {self.step}: {self.step - ended} of "
                      f"the epoch's {self.plan.epoch_ends[self.epoch] - ended} steps done)")
        self.say(f"resuming {self.run_dir} {where}")

    def _finish(self, final: EpochTest) -> TrainResult:
        weights = self.run_dir / ckpt.RUN_WEIGHTS
        if self.process.is_main:
            from ..models import save_weights

            info = self.info
            save_weights(self.eval_model, weights, class_names=info.class_names, input_size=info.input_size,
                         resize=info.resize, mean=list(info.mean), std=list(info.std), dataset=info.name,
                         recipe=self.config.recipe, test_top1=round(final.top1, 3))
            which = "averaged (EMA) weights" if self.ema is not None else "final weights"
            if self.dtype is not None:  # `googlenet eval` computes in fp32 unless told --bf16
                which += ", bf16 autocast as `googlenet eval --bf16`; eval's default fp32 may differ slightly"
            # The result as soon as it is known; the plots (a second or two) come after it.
            self.say(f"test accuracy: top-1 {final.top1:.2f}%  top-5 {final.top5:.2f}%  on {final.images} "
                     f"{info.name} test images ({which}); {self.elapsed():.0f}s in all")
            plots = self._write_plots(final)
            if self.tensorboard is not None:
                self.tensorboard.close()
            self.say(f"model: {weights}   plots: {', '.join(str(p) for p in plots)}")
        self.process.barrier()
        return TrainResult(self.run_dir, weights, final.top1, final.top5, final.images, self.elapsed(),
                           self.history)

    def _write_plots(self, final: EpochTest) -> list[Path]:
        from .. import report

        names = self.info.class_names
        paths = [report.plot_curves(self.history, self.run_dir / "curves.png")]
        matrix = report.confusion_matrix(final.targets, final.predictions, len(names))
        paths.append(report.plot_confusion(matrix, names, self.run_dir / "confusion.png"))
        wrong = torch.nonzero(final.predictions != final.targets).flatten()[:32].tolist()
        images = [self.test_loader.raw_image(i) for i in wrong]
        paths.append(report.plot_errors(images, [int(final.targets[i]) for i in wrong],
                                        [int(final.predictions[i]) for i in wrong], names,
                                        self.run_dir / "errors.png"))
        return paths


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


__all__ = ["Plan", "Process", "TrainResult", "Trainer", "train"]
