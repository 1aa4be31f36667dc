"""Faults injected into tiny training runs: stop signals, NaN/Inf losses, full disks and
unwritable run folders. Each keeps the last good checkpoint and ends in one line."""
from __future__ import annotations

import csv
import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from googlenet.cli import main
from googlenet.data.gpu_loader import TensorLoader
from googlenet.train import loop

from .conftest import write_fashion_mnist

STEPS_PER_EPOCH = 4  # 32 training images, batch 8
TINY = ["--limit-train", "32", "--limit-test", "8", "--batch-size", "8", "--input-size", "8", "--device", "cpu",
        "--seed", "1", "--precision", "fp32", "--set", "aux_logits=false", "--set", "ema=false", "--set", "lr=0.05"]


def _train(fmnist: Path, out: Path, *extra: str, epochs: int = 2) -> int:
    return main(["train", "--data", str(fmnist), *TINY, "--epochs", str(epochs), "--out", str(out), *extra])


def _one_line(capsys) -> tuple[str, str]:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip() and "received" not in line]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0], captured.out


def _checkpoint(run: Path) -> dict:
    return torch.load(run / "last.pt", weights_only=True)


def _all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def _on_step(monkeypatch, action) -> list[int]:
    """Run action(call_number) inside every training step's loss (1-based, after the forward pass)."""
    calls = []
    real = loop.googlenet_loss

    def wrapped(*args, **kwargs):
        loss = real(*args, **kwargs)
        calls.append(len(calls) + 1)
        return action(calls[-1], loss)

    monkeypatch.setattr(loop, "googlenet_loss", wrapped)
    return calls


# ------------------------------------------------------------------ stop signals
def test_sigint_saves_a_checkpoint_mid_epoch_and_resume_finishes(fmnist, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    handler_before = signal.getsignal(signal.SIGINT)

    def interrupt(call, loss):
        if call == 6:  # step 2 of epoch 2
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    _on_step(monkeypatch, interrupt)
    code = _train(fmnist, run, epochs=3)
    line, _ = _one_line(capsys)
    assert code == 130, line
    assert "SIGINT at step 6" in line and f"--resume {run}" in line
    state = _checkpoint(run)
    assert (state["epoch"], state["step"]) == (1, 6)  # the current step finished, then the checkpoint
    assert state["epoch_sums"]["images"] == 16
    assert signal.getsignal(signal.SIGINT) is handler_before  # the API leaves the caller's handler in place

    monkeypatch.undo()
    assert main(["train", "--resume", str(run)]) == 0
    assert f"resuming {run} part-way through epoch 2 (step 6: 2 of the epoch's 4 steps done)" in capsys.readouterr().out
    state = _checkpoint(run)
    assert state["step"] == 3 * STEPS_PER_EPOCH and state["epoch"] == 3
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [int(r["images"]) for r in rows] == [32, 32, 32]  # the stopped epoch counted in full
    # ... and exactly: the weights of a run never stopped (augmentation seeded per step, so the
    # mid-epoch restart draws the same crops and flips).
    assert _train(fmnist, tmp_path / "plain", epochs=3) == 0
    resumed, plain = load_file(run / "model.safetensors"), load_file(tmp_path / "plain" / "model.safetensors")
    assert resumed.keys() == plain.keys()
    assert all(torch.equal(resumed[k], plain[k]) for k in plain), "mid-epoch resume drifted from the plain run"


def _child_run_past_epoch_1(tmp_path: Path, epochs: int = 20, prefix: tuple[str, ...] = (),
                            stderr: int = subprocess.PIPE):
    """A tiny `googlenet train` in a child process (stdout piped; stderr too, or into stdout
    with subprocess.STDOUT), returned once it has printed its first epoch's line, with its run folder."""
    data = write_fashion_mnist(tmp_path / "fm")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GOOGLENET_CACHE": str(tmp_path / "cache"), "MPLBACKEND": "Agg"}
    child = subprocess.Popen([*prefix, sys.executable, "-m", "googlenet", "train", "--data", str(data), *TINY,
                              "--epochs", str(epochs), "--out", str(run)], env=env, stdout=subprocess.PIPE,
                             stderr=stderr, text=True)
    for line in child.stdout:  # wait until a training epoch has ended
        if line.startswith("epoch 1/"):
            break
    return child, run


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_from_outside_stops_cleanly_with_exit_143(tmp_path, signum):
    """A scheduler's SIGTERM, or a SIGHUP sent with `kill -HUP` (output going to a file or pipe,
    which the hangup handling leaves alone)."""
    child, run = _child_run_past_epoch_1(tmp_path)
    try:
        child.send_signal(signum)
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 128 + signum, err
    assert f"stopped by {signal.Signals(signum).name}" in err and f"--resume {run}" in err and "Traceback" not in err
    state = _checkpoint(run)
    assert 1 <= state["epoch"] < 20 and state["step"] >= STEPS_PER_EPOCH


# ------------------------------------------------------------------ NaN / Inf
def _poison_batch(monkeypatch, batch_number: int, value: float = float("nan")) -> None:
    """The batch_number-th training batch (1-based) carries NaN/Inf pixels: the forward pass itself
    goes bad, batch-norm statistics included."""
    real = TensorLoader.train_batches
    seen = [0]

    def batches(self, *args, **kwargs):
        for x, y in real(self, *args, **kwargs):
            seen[0] += 1
            yield (x * value if seen[0] == batch_number else x), y

    monkeypatch.setattr(TensorLoader, "train_batches", batches)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(fmnist, tmp_path, monkeypatch, capsys,
                                                                       value):
    run = tmp_path / "run"
    _poison_batch(monkeypatch, 6, value)
    code = _train(fmnist, run)
    line, _ = _one_line(capsys)
    assert code == 1 and "at step 6 (epoch 2)" in line and "--on-nan skip" in line, line
    assert "last.pt (the last good checkpoint) is kept" in line
    state = _checkpoint(run)
    assert (state["epoch"], state["step"]) == (1, STEPS_PER_EPOCH) and _all_finite(state)
    assert not (run / "model.safetensors").exists()


def test_nan_skip_drops_the_update_and_counts_it(fmnist, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _poison_batch(monkeypatch, 3)
    weights = []
    _on_step(monkeypatch, lambda call, loss: (weights.append(loop.Trainer.current.model.fc.weight.detach().clone()),
                                              loss)[1])
    monkeypatch.setattr(loop.Trainer, "current", None, raising=False)
    real_init = loop.Trainer.__init__

    def remember(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        loop.Trainer.current = self

    monkeypatch.setattr(loop.Trainer, "__init__", remember)
    code = _train(fmnist, run, "--on-nan", "skip")
    out = capsys.readouterr().out
    assert code == 0
    assert torch.equal(weights[2], weights[3]), "the poisoned step updated the weights"
    assert not torch.equal(weights[1], weights[2]), "healthy steps must update (else the check above is empty)"
    state = _checkpoint(run)
    assert state["skipped_steps"] == 1 and _all_finite(state)
    assert all(torch.isfinite(v).all() for k, v in state["model"].items() if "running" in k)  # BN statistics
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["images"]) for r in rows] == [24, 32] and "1 step(s) skipped" in out


def test_absurd_learning_rate_stops_without_saving_nan_weights(fmnist, tmp_path, capsys):
    run = tmp_path / "run"
    code = _train(fmnist, run, "--set", "lr=1e30")
    line, _ = _one_line(capsys)
    assert code == 1 and "--lr, now 1e+30" in line, line
    assert not (run / "last.pt").exists() or _all_finite(_checkpoint(run))
    assert not (run / "model.safetensors").exists()


# ------------------------------------------------------------------ full disk, unwritable folder
def _break_writes_at_epoch_2(monkeypatch, run: Path, how: str, undo: list) -> None:
    def act(call, loss):
        if call != STEPS_PER_EPOCH + 1:
            return loss
        if how == "file-size-limit":  # the kernel refuses to grow files: torch.save fails as on a full disk
            previous = resource.getrlimit(resource.RLIMIT_FSIZE)
            handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, previous[1]))
            undo.append(lambda: (resource.setrlimit(resource.RLIMIT_FSIZE, previous),
                                 signal.signal(signal.SIGXFSZ, handler)))
        elif how == "no-space":
            def full(*args, **kwargs):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            monkeypatch.setattr(torch, "save", full)
        elif how == "immutable-folder":  # works as root, unlike chmod
            subprocess.run(["chattr", "+i", str(run)], check=True)
            undo.append(lambda: subprocess.run(["chattr", "-i", str(run)], check=True))
        elif how == "permission-denied":
            def denied(*args, dir=None, **kwargs):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(Path(dir) / ".x.tmp"))
            monkeypatch.setattr("tempfile.mkstemp", denied)
        return loss

    _on_step(monkeypatch, act)


def _chattr_works(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(probe)],
                                                        capture_output=True).returncode != 0:
        return False
    subprocess.run(["chattr", "-i", str(probe)], check=True)
    return True


@pytest.mark.parametrize("how", ["file-size-limit", "no-space", "immutable-folder", "permission-denied"])
def test_failed_saves_are_one_line_and_keep_the_previous_checkpoint(how, fmnist, tmp_path, monkeypatch, capsys):
    if how == "immutable-folder" and not _chattr_works(tmp_path):
        pytest.skip("chattr +i needs root on a filesystem that supports it")
    run = tmp_path / "run"
    undo: list = []
    _break_writes_at_epoch_2(monkeypatch, run, how, undo)
    try:
        code = _train(fmnist, run)
    finally:
        for restore in undo:
            restore()
    line, _ = _one_line(capsys)
    assert code == 1, line
    assert f"in {run} (" in line and "intact" in line and f"--resume {run}" in line, line
    state = _checkpoint(run)
    assert (state["epoch"], state["step"]) == (1, STEPS_PER_EPOCH)
    assert not list(run.glob(".*.tmp"))
    monkeypatch.undo()
    assert main(["train", "--resume", str(run)]) == 0  # once the disk is fixed, the run continues
    assert _checkpoint(run)["epoch"] == 2


# ------------------------------------------------------------------ one process per run folder
def test_a_second_process_on_the_same_run_folder_is_refused(fmnist, tmp_path, capsys):
    from googlenet.train.guard import RunLock

    run = tmp_path / "run"
    assert _train(fmnist, run, epochs=1) == 0
    (run / "errors.png").unlink()  # unfinished again (a finished run is only reported, not locked)
    with RunLock(run):  # as if another `googlenet train --resume` were running there
        code = main(["train", "--resume", str(run / "last.pt")])
        line, _ = _one_line(capsys)
    assert code == 2 and f"{run} is in use by another googlenet train (pid {os.getpid()})" in line, line
    assert main(["train", "--resume", str(run / "last.pt")]) == 0  # free again; RUN/last.pt names the run too


def _image_folder(root: Path) -> Path:
    """Two classes of tiny PNGs in train/ and val/: data read by DataLoader worker processes."""
    from PIL import Image

    for split in ("train", "val"):
        for k, name in enumerate(("a", "b")):
            (root / split / name).mkdir(parents=True)
            for i in range(16 if split == "train" else 2):
                Image.new("RGB", (12, 12), (100 * k, 10 * i, 50)).save(root / split / name / f"{i}.png")
    return root


def _image_folder_run(root: Path, run: Path, epochs: int = 30) -> list[str]:
    return [sys.executable, "-m", "googlenet", "train", "--dataset", "imagefolder", "--data", str(root), "--model",
            "googlenet_cifar", "--workers", "2", "--input-size", "8", "--batch-size", "4", "--epochs", str(epochs),
            "--device", "cpu", "--set", "aux_logits=false", "--set", "ema=false", "--out", str(run)]


def test_ctrl_c_to_the_process_group_with_loader_workers_stops_cleanly(tmp_path):
    """A terminal's Ctrl-C reaches every process of the group, DataLoader workers included."""
    root = _image_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    child = subprocess.Popen(_image_folder_run(root, run), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in child.stdout:
            if line.startswith("epoch 1/"):
                break
        time.sleep(1.0)  # into epoch 2, while its loader workers run (an epoch takes seconds here)
        os.killpg(child.pid, signal.SIGINT)  # what the terminal does
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 130, err
    assert "stopped by SIGINT" in err and "Traceback" not in err and "exited unexpectedly" not in err, err
    assert _checkpoint(run)["step"] >= 4


def _wait(pid: int, timeout: float) -> int:
    """Exit code of child `pid` (128 + N for a death by signal N), killing it after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the run did not end within {timeout} s of the hangup")


def test_a_closed_terminal_stops_cleanly_with_exit_129(tmp_path):
    """The ssh session or terminal window a run was started from goes away: the kernel hangs the
    terminal up and sends SIGHUP to its foreground processes (DataLoader workers included), and
    from then on every write to it fails. Without a handler that SIGHUP kills the run outright."""
    import pty
    import select

    root = _image_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    pid, terminal = pty.fork()  # the child runs on a terminal of its own, as its session leader
    if pid == 0:  # child: nothing but exec (a forked pytest must not go on)
        try:
            os.execve(sys.executable, _image_folder_run(root, run), env)
        finally:
            os._exit(127)
    seen, deadline = b"", time.monotonic() + 120
    try:
        while b"epoch 1/" not in seen and time.monotonic() < deadline:
            if select.select([terminal], [], [], 1.0)[0]:
                try:
                    seen += os.read(terminal, 4096)
                except OSError:  # the child has ended and closed its side
                    break
        assert b"epoch 1/" in seen, seen.decode(errors="replace")[-2000:]
        time.sleep(1.0)  # into epoch 2, while its loader workers run
    finally:
        os.close(terminal)  # the terminal goes away: hangup
    code = _wait(pid, timeout=120)
    assert code == 129, seen.decode(errors="replace")[-2000:]
    state = _checkpoint(run)
    assert 1 <= state["epoch"] < 30 and state["step"] >= 4
    assert "Traceback" not in (run / "metrics.csv").read_text()


@pytest.mark.parametrize("stderr_too", [False, True], ids=["stdout", "2>&1"])
def test_output_piped_to_a_reader_that_ends_stops_cleanly_with_exit_141(tmp_path, stderr_too):
    """`googlenet train | tee log`, and tee ends (killed, or `| head`): the next print would fail
    with EPIPE and end the run without a checkpoint. Instead the output is dropped and the run
    stops as if asked, saving its checkpoint; stderr, if still readable, says so. With `2>&1`
    stderr is the same dead pipe: it is silenced too, and the exit code still tells."""
    child, run = _child_run_past_epoch_1(tmp_path, stderr=subprocess.STDOUT if stderr_too else subprocess.PIPE)
    try:
        child.stdout.close()  # the reader ends
        err = "" if stderr_too else child.stderr.read()
        child.wait(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 128 + signal.SIGPIPE, err
    if not stderr_too:
        assert "stopped because its output went away" in err and f"--resume {run}" in err
        assert "Traceback" not in err
    state = _checkpoint(run)
    assert 1 <= state["epoch"] < 20


def test_a_run_started_under_nohup_ignores_sighup_and_finishes(tmp_path):
    """`nohup googlenet train ...` sets SIGHUP to be ignored; the run must keep that wish."""
    child, run = _child_run_past_epoch_1(tmp_path, epochs=3, prefix=("nohup",))
    try:
        child.send_signal(signal.SIGHUP)
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 0, err
    assert _checkpoint(run)["epoch"] == 3 and (run / "model.safetensors").is_file()
