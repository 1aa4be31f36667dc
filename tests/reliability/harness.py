"""Run `googlenet ARGS...` and SIGKILL this process at a chosen point, for the crash tests.

RELIABILITY_KILL_AT="EVENT:N" kills the process the N-th time EVENT happens in it:
  step                 inside a training step (after the forward pass, before the update)
  torn-NAME            while writing NAME (last.pt, metrics.csv): the temporary file holds
                       half its bytes when the process dies
  unrenamed-NAME       NAME fully written to its temporary file, not yet renamed into place
  saved-NAME           right after NAME was saved (best.pt: hard-linked to last.pt)
RELIABILITY_LOG=FILE gets one line "NAME EPOCH STEP" per checkpoint saved in full.
Nothing here changes what gets written; it only chooses when the process dies.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

from googlenet import fileio
from googlenet.cli import main
from googlenet.train import checkpoint, loop

KILL_AT = os.environ.get("RELIABILITY_KILL_AT", "")
LOG = os.environ.get("RELIABILITY_LOG")
_counts: dict[str, int] = {}


def due(event: str) -> bool:
    _counts[event] = _counts.get(event, 0) + 1
    return KILL_AT == f"{event}:{_counts[event]}"


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def staged(name: str, write):
    def write_then_maybe_die(tmp: str) -> None:
        write(tmp)
        if due(f"torn-{name}"):
            size = os.path.getsize(tmp)
            os.truncate(tmp, size // 2)
            die()
        if due(f"unrenamed-{name}"):
            die()
    return write_then_maybe_die


def save_checkpoint(path, payload):
    name = Path(path).name
    fileio.atomic_write(path, staged(name, lambda tmp: torch.save(payload, tmp)))
    if LOG:
        with open(LOG, "a") as f:
            f.write(f"{name} {payload['epoch']} {payload['step']}\n")
    if due(f"saved-{name}"):
        die()
    return Path(path)


real_save_best = checkpoint.save_best


def save_best(run_dir, payload):
    path = real_save_best(run_dir, payload)
    if LOG:
        with open(LOG, "a") as f:
            f.write(f"{path.name} {payload['epoch']} {payload['step']}\n")
    if due(f"saved-{path.name}"):
        die()
    return path


def atomic_write(path, write):
    return fileio.atomic_write(path, staged(Path(path).name, write))


real_loss = loop.googlenet_loss


def googlenet_loss(*args, **kwargs):
    loss = real_loss(*args, **kwargs)
    if due("step"):
        die()
    return loss


checkpoint.save_checkpoint = save_checkpoint
checkpoint.save_best = save_best
loop.atomic_write = atomic_write
loop.googlenet_loss = googlenet_loss

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
