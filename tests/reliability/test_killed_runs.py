"""SIGKILL at seeded points of a run (mid-step, mid-write of a checkpoint or of metrics.csv,
between write and rename, right after a save): `--resume` always finds a whole checkpoint,
loses at most the work since it, and the resumed run ends bit-identical to one never killed."""
from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from .conftest import write_fashion_mnist

HARNESS = Path(__file__).with_name("harness.py")
EPOCHS = 3
TINY = ["--limit-train", "32", "--limit-test", "8", "--epochs", str(EPOCHS), "--batch-size", "8",
        "--input-size", "8", "--device", "cpu", "--seed", "3", "--precision", "fp32",
        "--set", "aux_logits=false", "--set", "ema=false", "--set", "lr=0.05"]
STEPS_PER_EPOCH = 4
# Every kind of kill point; the counts stay within what one process of this run reaches.
KILL_POINTS = (["step:2", "step:6", "step:9"]
               + [f"{kind}-last.pt:{n}" for kind in ("torn", "unrenamed", "saved") for n in (1, 2)]
               + ["saved-best.pt:1", "torn-metrics.csv:2", "unrenamed-metrics.csv:1"])
KILLS = 3
SEED = int(os.environ.get("RELIABILITY_SEED", "2026"))  # set it to explore other kill plans


def _run(args: list[str], env: dict, kill_at: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HARNESS), *args], env={**env, "RELIABILITY_KILL_AT": kill_at},
                          capture_output=True, text=True, timeout=240)


def _saved(log: Path, name: str = "last.pt") -> tuple[int, int] | None:
    lines = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    done = [(int(epoch), int(step)) for n, epoch, step in lines if n == name]
    return done[-1] if done else None


def test_sigkill_anywhere_loses_at_most_the_work_since_the_last_checkpoint(tmp_path):
    data = write_fashion_mnist(tmp_path / "fm")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GOOGLENET_CACHE": str(tmp_path / "cache"), "MPLBACKEND": "Agg"}
    train = ["train", "--data", str(data), *TINY]

    whole = tmp_path / "whole"
    baseline = _run([*train, "--out", str(whole)], env)
    assert baseline.returncode == 0, baseline.stderr

    run, log = tmp_path / "run", tmp_path / "saves.log"
    env["RELIABILITY_LOG"] = str(log)
    plan = random.Random(SEED).sample(KILL_POINTS, KILLS)
    # best.pt is saved only when the test accuracy improves, which the first epoch of a fresh
    # run always does (a resumed process may never): a best.pt kill point goes first.
    plan.sort(key=lambda point: "best.pt" not in point)
    if not any(point.startswith("torn-last.pt") for point in plan):  # always kill inside a checkpoint write
        plan[1] = "torn-last.pt:1"
    for kill_at in plan:
        args = ["train", "--resume", str(run)] if (run / "last.pt").exists() else [*train, "--out", str(run)]
        before = _saved(log)
        killed = _run(args, env, kill_at)
        assert killed.returncode == -signal.SIGKILL, f"{kill_at}: not killed ({killed.returncode}) {killed.stderr}"
        after = _saved(log)
        if after is None:
            assert not (run / "last.pt").exists()
            continue
        # The checkpoint on disk is whole and is exactly the last one saved before the kill.
        state = torch.load(run / "last.pt", weights_only=True)
        assert (state["epoch"], state["step"]) == after, (kill_at, after)
        assert state["step"] == state["epoch"] * STEPS_PER_EPOCH
        assert before is None or after >= before
        assert not (run / "model.safetensors").exists()

    resumable = (run / "last.pt").exists()
    finished = _run(["train", "--resume", str(run)] if resumable else [*train, "--out", str(run)], env)
    assert finished.returncode == 0, finished.stderr
    assert ("resuming" in finished.stdout) == resumable
    expected, got = load_file(whole / "model.safetensors"), load_file(run / "model.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), f"{key} differs after kills at {plan}"
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    assert not list(run.glob(".*.tmp")), "temporary files of killed writes are left behind"
