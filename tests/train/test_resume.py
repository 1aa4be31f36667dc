"""--resume continues exactly: a run killed (SIGKILL) after its first epoch's checkpoint and
resumed ends bit-identical to an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


TINY = ["--limit-train", "96", "--limit-test", "32", "--epochs", "2", "--batch-size", "16", "--input-size", "12",
        "--device", "cpu", "--seed", "7", "--precision", "fp32", "--set", "lr=0.05"]


def _command(data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "googlenet", "train", "--data", str(data), *TINY, *extra]


def _kill_once_written(command: list[str], env: dict, path: Path) -> None:
    """Start `command` and SIGKILL it as soon as `path` exists (within 5 minutes)."""
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not path.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, "the run ended before it could be killed"


def _env(tmp_path: Path) -> dict:
    # One thread in every run: the same reduction order, so bit-identical results.
    return {**os.environ, "OMP_NUM_THREADS": "1", "GOOGLENET_CACHE": str(tmp_path / "cache"),
            "MPLBACKEND": "Agg"}


def test_killed_and_resumed_run_matches_uninterrupted_run(tmp_path, fake_fmnist):
    data = fake_fmnist(tmp_path / "fm", n_train=96, n_test=32)
    env = _env(tmp_path)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    done = subprocess.run(_command(data, "--out", str(whole)), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]  # the reason, if it fails (it once did, once, in a full run)

    _kill_once_written(_command(data, "--out", str(broken)), env, broken / "last.pt")
    saved = torch.load(broken / "last.pt", weights_only=True)
    if saved["epoch"] != 1:
        pytest.fail(f"the kill came late (checkpoint of epoch {saved['epoch']}); the test needs a slower epoch 2")
    assert not (broken / "model.safetensors").exists()

    resumed = subprocess.run([sys.executable, "-m", "googlenet", "train", "--resume", str(broken)], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout

    expected, got = load_file(whole / "model.safetensors"), load_file(broken / "model.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    raw_expected = torch.load(whole / "last.pt", weights_only=True)
    raw_got = torch.load(broken / "last.pt", weights_only=True)
    for key, value in raw_expected["model"].items():
        assert torch.equal(value, raw_got["model"][key]), key
    assert raw_expected["step"] == raw_got["step"] == 12
    assert (broken / "metrics.csv").read_text() .count("\n") == 3  # header + 2 epochs, no duplicate

    # --resume of a finished run has nothing to do: it says so at once (no final test rerun).
    before = (whole / "model.safetensors").stat().st_mtime_ns
    again = subprocess.run([sys.executable, "-m", "googlenet", "train", "--resume", str(whole), "--epochs", "3"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "has finished" in again.stdout and "test accuracy" not in again.stdout
    assert "note: ignoring --epochs: a finished run is not changed" in again.stdout  # not dropped silently
    assert (whole / "model.safetensors").stat().st_mtime_ns == before
    # With --nproc 2 too: it launched two processes that re-ran the final test and rewrote the files.
    again = subprocess.run([sys.executable, "-m", "googlenet", "train", "--resume", str(whole), "--nproc", "2"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "has finished" in again.stdout and "test accuracy" not in again.stdout
    assert (whole / "model.safetensors").stat().st_mtime_ns == before
    # A run killed after its last checkpoint but before its final files still finishes.
    (broken / "errors.png").unlink()
    rerun = subprocess.run([sys.executable, "-m", "googlenet", "train", "--resume", str(broken)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "test accuracy" in rerun.stdout, rerun.stderr
    assert (broken / "errors.png").is_file()


def test_a_run_killed_before_its_first_checkpoint_says_how_to_start_it_again(tmp_path, fake_fmnist, capsys,
                                                                             monkeypatch):
    """It said "no checkpoint at RUN/last.pt; --resume takes a run folder holding last.pt"; the
    command it now suggests is run as written."""
    import shlex

    from googlenet.cli import main

    data = fake_fmnist(tmp_path / "fm", n_train=96, n_test=32)
    env = _env(tmp_path)
    run = tmp_path / "run"
    _kill_once_written(_command(data, "--out", str(run), "--epochs", "1"), env, run / "config.yaml")
    if (run / "last.pt").exists():
        pytest.fail("the kill came after the first checkpoint; the test needs a slower first epoch")

    monkeypatch.setenv("GOOGLENET_CACHE", env["GOOGLENET_CACHE"])
    assert main(["train", "--resume", str(run)]) == 2
    line = capsys.readouterr().err.strip()
    config = run / "config.yaml"
    assert line == (f"googlenet train: error: {run} stopped before its first checkpoint: nothing to resume; start it "
                    f"again with `googlenet train --config {config} --out {run}`")
    suggested = shlex.split(line.split("`")[1])
    assert suggested[:2] == ["googlenet", "train"] and main(suggested[1:]) == 0
    assert (run / "model.safetensors").is_file()
