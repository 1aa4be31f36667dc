"""Checkpoints: everything needed to continue a run exactly, readable with weights_only=True.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled
objects), written atomically (temp file, fsync, rename): model, optimizer, scheduler,
averaged (EMA) weights, the RNG states of torch, CUDA, numpy and Python as tensors,
the epoch/step reached, the training history and the resolved config.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..fileio import atomic_link, atomic_write
from ..models.weights import (RUN_CHECKPOINT, RUN_WEIGHTS, TorchLoadError, is_checkpoint_payload,
                              torch_load_weights_only)

LAST = RUN_CHECKPOINT  # a run folder's names are defined once, beside the weights loader that reads them
BEST = "best.pt"


def rng_state() -> dict[str, Any]:
    version, mt_state, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(np_kind), "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": int(version), "state": torch.tensor(mt_state, dtype=torch.int64),
                   "gauss": gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write atomically; a failed write (disk full, unwritable folder) is a one-line RunError
    and the previous checkpoint stays as it was."""
    try:
        return atomic_write(path, lambda tmp: torch.save(payload, tmp))
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        from .guard import save_failed

        raise save_failed(path, e, Path(path).parent) from None


def save_best(run_dir: Path, payload: dict[str, Any]) -> Path:
    """best.pt, right after last.pt was saved with the same payload: a hard link to it (no
    second write of a ~100 MB file at every improving epoch); a copy where links fail."""
    best = run_dir / BEST
    if atomic_link(run_dir / LAST, best):
        return best
    return save_checkpoint(best, payload)


def checkpoint_path(resume: str | Path) -> Path:
    """The checkpoint `--resume` means: RUN_DIR/last.pt for a run folder, else the file given."""
    resume = Path(resume)
    return resume / LAST if resume.is_dir() else resume


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with weights_only=True (no code in it can run)."""
    if not Path(path).exists():
        raise UserError(f"no such run folder: {path}; --resume takes a run folder holding {LAST}")
    path = checkpoint_path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; --resume takes a run folder holding {LAST}")
    try:
        payload = torch_load_weights_only(path)
    except TorchLoadError as e:  # an image, a truncated file, pickled objects
        if not e.written_by_torch_save:
            raise UserError(f"{path} is not a training checkpoint ({e.reason}); "
                            f"--resume takes a run folder holding {LAST}") from None
        raise UserError(f"{path}: cannot be read as a training checkpoint ({e.reason})") from None
    if not is_checkpoint_payload(payload):
        raise UserError(f"{path}: not a googlenet training checkpoint")
    return payload


def finished_weights(run: str | Path) -> Path | None:
    """The run's model.safetensors when the run has finished (every planned epoch done, and the
    final weights and errors.png -- the last file a run writes -- written after its last
    checkpoint), else None: there is work to resume, if only the final test and plots."""
    folder = checkpoint_path(run).parent
    last = folder / LAST
    weights = folder / RUN_WEIGHTS
    if not last.is_file():
        return None
    saved = last.stat().st_mtime
    if not all(f.is_file() and f.stat().st_mtime >= saved for f in (weights, folder / "errors.png")):
        return None
    payload = load_checkpoint(last)
    plan = payload.get("plan") or {}
    return weights if int(payload.get("epoch", 0)) >= int(plan.get("epochs", 1 << 30)) else None
