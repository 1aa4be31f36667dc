"""Fitting a run to a wall-clock budget (`googlenet train --budget 10m`).

The first plan times a few real training steps and one test batch, then sets the total
steps, the epochs and a per-epoch test subset so that training, the tests and the final
test end inside the budget; after epoch REPLAN_AFTER_EPOCH the rest is refitted once from
what the epochs really cost. `BudgetPlanning` holds these steps as methods of the Trainer,
which mixes it in: they read the trainer's loaders, clock and schedule.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from .recipes import duration_label

CALIBRATION_STEPS = {"cpu": 6, "cuda": 28}  # steps timed to fit a budget (the first call per setting is warm-up)
# Steps per timed call. A GPU is timed over blocks: within one the host queues a step while the
# GPU runs the one before, as in training (a step timed alone has the two back to back).
CALIBRATION_BLOCK = {"cpu": 1, "cuda": 4}
REPLAN_AFTER_EPOCH = 2  # a budget run refits its remaining steps once, with what epochs 1-2 cost
PER_EPOCH_SHARE = 0.15  # at most this share of a budget's time left goes to per-epoch tests and checkpoints


@dataclass
class Plan:
    """How many steps the run takes and where its epochs end (fixed once, saved in checkpoints)."""

    epochs: int
    total_steps: int
    epoch_ends: list[int]  # global step at the end of each epoch
    eval_subset: int | None  # per-epoch evaluation on the first N test images (None: all)
    steps_per_epoch: float  # one pass over the data, for the step schedule
    light_augment: bool = False  # a budget too short to see every image once: flips only
    warmup_steps: float | None = None  # set by a budget re-plan: where warm-up ends (else a share of the total)
    decay_resumed_at: int | None = None  # set by a re-plan after warm-up: the step the decay was stretched from
    decay_progress_then: float = 0.0  # ... and how far the decay was there (see LRSchedule)

    @staticmethod
    def fixed(epochs: int, steps_per_epoch: int, eval_subset: int | None) -> "Plan":
        ends = [(e + 1) * steps_per_epoch for e in range(epochs)]
        return Plan(epochs, ends[-1], ends, eval_subset, float(steps_per_epoch))


def format_figure(value: float) -> str:
    """12.4 -> '12', 0.3 -> '0.3', 0.001 -> '0.001': a tiny budget or a slow img/s is not shown as '0'."""
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _budget_margin_s(budget: float) -> float:
    """Seconds of a budget kept back for the final checkpoint, weights and plots, and safety."""
    return min(10.0, 0.05 * budget) + 0.02 * budget


class BudgetPlanning:
    """The Trainer's budget methods (a mixin: `self` is the Trainer)."""

    def _plan_budget(self) -> Plan:
        """Time the first steps and one evaluation batch, then fit steps and epochs to the budget."""
        c = self.config
        budget = c.budget_seconds()
        calib = CALIBRATION_STEPS.get(self.device.type, 8)
        self.say(f"budget {duration_label(c.budget)}: timing {calib} training steps to fit the schedule ...")
        self._epoch_sums = self._zero_sums()
        step_s = self._calibrate(calib, budget)
        calib = self.step  # steps taken (fewer when the machine is very slow)

        eval_rate = self.budget_eval_rate = self._measure_eval_rate()  # images / s
        test_images = self.info.test_size
        final_eval_s = self._final_eval_s()
        overhead_s = _budget_margin_s(budget)
        per_epoch_eval_share = 0.05 * budget
        remaining = budget - self.elapsed() - final_eval_s - overhead_s - per_epoch_eval_share
        extra_steps = max(0, int(remaining / step_s))
        total = calib + extra_steps
        per_pass = self.train_loader.steps_per_epoch
        epochs = total // per_pass if total >= 2 * per_pass else min(4, total)
        epochs = max(1, min(epochs, total // calib))  # the calibration steps fit in epoch 1
        ends = [round(total * (e + 1) / epochs) for e in range(epochs)]
        eval_subset = c.eval_subset
        if eval_subset is None and epochs > 1 and test_images / eval_rate * (epochs - 1) > per_epoch_eval_share:
            batch = self.test_loader.batch_size
            eval_subset = max(batch, int(per_epoch_eval_share * eval_rate / (epochs - 1)) // batch * batch)
            eval_subset = min(eval_subset, test_images)
        light = total < per_pass and self.resident_data  # only the resident loader's batch augment can change
        plan = Plan(epochs, total, ends, eval_subset, float(per_pass), light)
        subset_note = f", per-epoch test on the first {eval_subset} images" if eval_subset else ""
        if light:
            subset_note += ", under one pass: flips only (no crops/erasing)"
        # A budget's epochs are where it tests and checkpoints, not always whole passes: say so.
        per_epoch = total / epochs / per_pass
        epoch_size = "" if abs(per_epoch - 1) < 0.01 else f" of {per_epoch:.2g} passes each"
        self.say(f"budget {duration_label(c.budget)}: {step_s:.2f} s/step, {eval_rate:.0f} test img/s -> {total} steps "
                 f"({total * self.train_loader.global_batch} images, {total / per_pass:.3g} passes) in "
                 f"{epochs} epoch{'s' if epochs != 1 else ''}{epoch_size}{subset_note}; final test on all "
                 f"{test_images} images")
        if final_eval_s > 0.5 * budget:  # the budget is mostly the final test: the run will overrun or barely train
            passes = 3 if self.config.tta_flip else 1  # flip averaging tests each image three times
            fits = int(0.25 * budget * eval_rate / passes)  # images a quarter of the budget can test
            fits = fits // 10 * 10 if fits >= 10 else fits
            fewer = f", or test on fewer images with --limit-test {fits}" if fits >= 1 else ""
            self.say(f"note: the final test alone takes ~{format_figure(final_eval_s)} s of the {format_figure(budget)}-s "
                     f"budget ({test_images} images at {format_figure(eval_rate)} img/s), so the run will train little and "
                     f"may overrun it; give a longer --budget{fewer}")
        return plan

    def _final_eval_s(self) -> float:
        # With tta_flip the plain test is followed by one over each image and its mirror image.
        return self.info.test_size / self.budget_eval_rate * (3 if self.config.tta_flip else 1)

    def _replan_budget(self, train_s: float, cycle_overhead_s: float) -> None:
        """Refit the rest of a budget run once, after epoch REPLAN_AFTER_EPOCH, from what it has
        measured: that epoch's steady step time and what an epoch's test, log and checkpoint
        really cost (the first plan could only guess those). Where those would eat more than
        PER_EPOCH_SHARE of the time left, fewer, longer epochs. The total steps move by at most
        -50% / +50% (the first plan's few timed steps ran up to a third slower than an
        epoch's on a 2-core CPU). The learning rate does not jump: warm-up keeps its end step,
        and a decay already under way goes on from where it is, stretched or squeezed over the
        new rest. Augmentation and the per-epoch test subset stay as first planned."""
        c, plan = self.config, self.plan
        budget = c.budget_seconds()
        step_s = train_s / max(1, plan.epoch_ends[self.epoch - 1] - plan.epoch_ends[self.epoch - 2])
        time_left = budget - self.elapsed() - self._final_eval_s() - _budget_margin_s(budget)
        epochs_left = plan.epochs - self.epoch
        if cycle_overhead_s > 0:
            epochs_left = max(1, min(epochs_left, int(PER_EPOCH_SHARE * time_left / cycle_overhead_s)))
        remaining = time_left - epochs_left * cycle_overhead_s
        wanted = self.step + int(max(0.0, remaining) / max(step_s, 1e-9))
        total = min(max(wanted, plan.total_steps // 2, self.step + epochs_left), plan.total_steps * 3 // 2)
        total, epochs_left = self.process.broadcast_object((total, epochs_left))  # rank 0's timing for all
        if epochs_left == plan.epochs - self.epoch and abs(total - plan.total_steps) <= 0.02 * plan.total_steps:
            return  # on course
        ends = plan.epoch_ends[: self.epoch] + [
            self.step + round((total - self.step) * (e + 1) / epochs_left) for e in range(epochs_left)]
        self.say(f"budget {duration_label(c.budget)}: re-planned after epoch {self.epoch}: {step_s:.3f} s/step and "
                 f"{cycle_overhead_s:.2f} s of test and checkpoint per epoch -> {total} steps in "
                 f"{self.epoch + epochs_left} epochs (planned {plan.total_steps} in {plan.epochs})")
        warmup_steps = self.schedule.warmup_end()  # fixed from here on
        resumed_at, progress_then = plan.decay_resumed_at, plan.decay_progress_then
        if self.step > warmup_steps:  # decaying: go on from here (a warm-up still under way just ends as planned)
            resumed_at, progress_then = self.step, self.schedule.decay_progress(self.step)
        self.plan = replace(plan, epochs=self.epoch + epochs_left, total_steps=total, epoch_ends=ends,
                            warmup_steps=warmup_steps, decay_resumed_at=resumed_at,
                            decay_progress_then=progress_then)
        self.schedule.follow(self.plan)

    def _calibrate(self, steps: int, budget: float) -> float:
        """Seconds per step from up to `steps` real training steps (the first call per setting is warm-up).

        On a CPU half of them run on one thread and the faster thread count is kept: on a
        machine shared with other work, one thread can be several times faster than two.
        """
        threads = torch.get_num_threads()
        try_one = self.device.type == "cpu" and threads > 1 and self.process.world_size == 1
        per_call = CALIBRATION_BLOCK.get(self.device.type, 4)
        calls = max(2, steps // per_call)
        # Warm-up call, timed call, for each setting in turn; then alternate.
        settings = ([threads, threads, 1, 1] + [threads, 1] * calls)[:calls] if try_one else [threads] * calls
        timings: dict[int, list[float]] = {}
        warm: set[int] = set()
        last = 0.0
        stop_at = time.perf_counter() + 0.15 * budget  # never spend much of the budget measuring
        for n in settings:
            torch.set_num_threads(n)
            t = time.perf_counter()
            self._train_steps(0, per_call, desc="calibrating", show=False)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            last = (time.perf_counter() - t) / per_call
            if n in warm:
                timings.setdefault(n, []).append(last)
            warm.add(n)
            measured_all = all(timings.get(k) for k in set(settings))
            done = time.perf_counter() > stop_at and (measured_all or time.perf_counter() > stop_at + 0.1 * budget)
            if self.process.world_size > 1:  # rank 0's clock decides: every rank must take as many steps
                done = bool(self.process.broadcast_object(done))
            if done:
                break
        if not timings:
            torch.set_num_threads(threads)
            return last
        best = min(timings, key=lambda n: float(np.median(timings[n])))
        torch.set_num_threads(best)
        if best != threads:
            self.say(f"using 1 CPU thread: faster than {threads} on this machine now (it is busy with other work)")
        return float(np.median(timings[best]))

    def _apply_light_augment(self) -> None:
        # Crops and erasing pay off over many passes; a run that sees each image less than
        # once learns faster on clean images (the model underfits, there is nothing to regularise).
        if self.plan.light_augment and self.resident_data:
            from ..data.gpu_loader import BatchAugment

            self.train_loader.augment = BatchAugment(flip=self.config.flip)

    def _measure_eval_rate(self) -> float:
        batch = next(iter(self.test_loader.eval_batches(self.test_loader.batch_size)))[0]
        model = self.eval_model
        model.eval()
        times = []
        # One warm-up call, then the median of three: a single slow call must not halve the
        # estimate (it once read 130 img/s for a steady ~290 and wasted a minute of a budget).
        with torch.no_grad():
            for _ in range(4):
                t = time.perf_counter()
                with self._autocast():
                    model(batch)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
        return len(batch) / max(statistics.median(times[1:]), 1e-6)
