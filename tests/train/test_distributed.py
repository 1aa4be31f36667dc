"""Data-parallel training on the CPU with gloo: two processes launched through torchrun
(`googlenet train --nproc 2`) on 127.0.0.1, tiny data and sizes.

What a 2-process run is compared with: ONE process with the same global batch made of
the same two micro-batches (batch 8 x accumulation 2 vs batch 8 x 2 processes). Each
micro-batch then goes through exactly the same arithmetic (batch norm normalises 8
images in both), and DDP's average of two gradients equals accumulating two half-
weighted ones, so the parameters agree to the last bits. Per-rank random streams are
switched off for the comparison (augmentation and dropout draw per rank). A plain
1 x 16 batch is NOT a usable reference at these sizes: batch norm over 16 images is a
different function, and fp32 rounding alone (e.g. channels_last vs contiguous) moves
a 4-step update of this tiny network by tens of percent, so only a bit-level
comparison can tell a correct run from a subtly wrong one. SyncBatchNorm (the
statistics of the whole global batch) is checked against BatchNorm2d on the whole
batch in float64, where rounding cannot hide an error.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from googlenet.errors import UserError
from googlenet.train.distributed import FAIL_HOOK_ENV, global_batch, rescale_for_world_size
from googlenet.train.recipes import TrainConfig

DETERMINISTIC = ["--set", "crop_padding=0", "--set", "flip=false", "--set", "erasing=0", "--set", "dropout=0",
                 "--set", "dropout_aux=0", "--set", "lr=0.05", "--set", "ema=false"]
N_TRAIN, N_TEST = 64, 21  # 4 steps per epoch at a global batch of 16; 21 test images split 11 + 10


def _command(data: Path, batch: int, epochs: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "googlenet", "train", "--data", str(data), "--limit-train", str(N_TRAIN),
            "--limit-test", str(N_TEST), "--epochs", str(epochs), "--batch-size", str(batch), "--input-size", "16",
            "--device", "cpu", "--precision", "fp32", "--seed", "3", *DETERMINISTIC, *extra]


def _env(tmp_path: Path, **extra: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "GOOGLENET_CACHE": str(tmp_path / "cache"), "MPLBACKEND": "Agg",
            **extra}


def _run(command: list[str], env: dict, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _assert_same_parameters(expected: dict, got: dict) -> None:
    """Every trained parameter equal within fp32 rounding. Batch-norm running statistics are
    left out: under DDP they are rank 0's (DDP broadcasts its buffers), under accumulation
    both micro-batches update them; they play no part in training-mode forward passes."""
    assert expected.keys() == got.keys()
    compared = 0
    for key, value in expected.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-7, msg=key)
        compared += 1
    assert compared > 100


def _checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "last.pt", weights_only=True)


def _metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def data(tmp_path, fake_fmnist):
    return fake_fmnist(tmp_path / "fm", n_train=N_TRAIN, n_test=N_TEST)


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, data):
    single = _run(_command(data, 8, 1, "--set", "accum_steps=2", "--out", str(tmp_path / "single")), _env(tmp_path))
    assert single.returncode == 0, single.stderr
    assert "global batch 16 (8/process x 1 processes x 2 accumulation)" in single.stdout

    workdir = tmp_path / "work"
    workdir.mkdir()
    # No --out: each rank would name its own timestamped folder; rank 0's name is used by all.
    ddp = _run(_command(data, 8, 1, "--nproc", "2"), _env(tmp_path), cwd=workdir)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    folders = list((workdir / "runs").iterdir())
    assert len(folders) == 1 and sorted(os.listdir(workdir)) == ["runs"], folders
    run_dir = folders[0]
    for name in ("config.yaml", "metrics.csv", "last.pt", "model.safetensors", "curves.png", "confusion.png"):
        assert (run_dir / name).is_file(), name

    # Only rank 0 prints: one start line, one result line, global batch and lr reported.
    assert ddp.stdout.count("test accuracy:") == 1 and ddp.stdout.count("train googlenet_cifar") == 1
    assert "global batch 16 (8/process x 2 processes x 1 accumulation), lr 0.05" in ddp.stdout

    expected, got = _checkpoint(tmp_path / "single"), _checkpoint(run_dir)
    assert got["step"] == expected["step"] == N_TRAIN // 16
    assert got["world_size"] == 2
    _assert_same_parameters(expected["model"], got["model"])

    # Evaluation gathered every test image once: 11 + 10 over two ranks, all 21 counted,
    # and the same accuracy as the single process (same weights, same images).
    rows, reference = _metrics(run_dir), _metrics(tmp_path / "single")
    assert [r["test_images"] for r in rows] == [str(N_TEST)]
    assert rows[0]["test_top1"] == reference[0]["test_top1"]
    assert rows[0]["images"] == reference[0]["images"] == str(N_TRAIN)
    assert abs(float(rows[0]["train_loss"]) - float(reference[0]["train_loss"])) < 1e-4


def test_failing_rank_ends_job_quickly_and_run_resumes_on_one_process(tmp_path, data):
    run_dir = tmp_path / "ddp"
    started = time.monotonic()
    # Rank 1 dies abruptly at step 6 (epoch 2 of 2), after the epoch-1 checkpoint.
    broken = _run(_command(data, 8, 2, "--nproc", "2", "--out", str(run_dir)),
                  _env(tmp_path, **{FAIL_HOOK_ENV: "1:6"}), timeout=120)
    took = time.monotonic() - started
    assert broken.returncode != 0
    assert took < 90, f"a dead rank took {took:.0f}s to end the job"
    assert "the 2-process job failed" in broken.stderr
    assert "exiting abruptly (test hook)" in broken.stderr
    assert not (run_dir / "model.safetensors").exists()
    assert _checkpoint(run_dir)["epoch"] == 1

    # Resume on ONE process: the global batch (2 x 8) is kept as 8 x 2 accumulation steps, so
    # the schedule and sample stream continue unchanged; the result matches a run that was a
    # single process throughout.
    resumed = _run([sys.executable, "-m", "googlenet", "train", "--resume", str(run_dir)], _env(tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    assert "global batch 16 (8/process x 1 processes x 2 accumulation)" in resumed.stdout
    single = _run(_command(data, 8, 2, "--set", "accum_steps=2", "--out", str(tmp_path / "single")),
                  _env(tmp_path))
    assert single.returncode == 0, single.stderr
    expected, got = _checkpoint(tmp_path / "single"), _checkpoint(run_dir)
    assert got["step"] == expected["step"] == 2 * N_TRAIN // 16
    _assert_same_parameters(expected["model"], got["model"])
    assert len(_metrics(run_dir)) == 2


COLLECTIVES_SCRIPT = textwrap.dedent("""
    import torch, torch.distributed as dist
    from torch import nn
    from googlenet.train.distributed import DistributedProcess, convert_sync_batchnorm

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    process = DistributedProcess(rank=rank, world_size=world)

    # gather_cat: uneven shards (3 and 1 rows) come back whole, in rank order, no padding left.
    mine = torch.arange(3) if rank == 0 else torch.tensor([7])
    assert process.gather_cat(mine).tolist() == [0, 1, 2, 7], process.gather_cat(mine)
    assert process.gather_cat(torch.empty(0, dtype=torch.long) if rank else torch.tensor([5])).tolist() == [5]
    assert int(process.all_reduce_sum(torch.tensor(rank + 1))) == 3
    assert process.broadcast_object({"rank": rank}) == {"rank": 0}

    # Synchronised batch norm on half batches == BatchNorm2d on the whole batch (outputs,
    # input gradients, parameter gradients summed over ranks, running statistics).
    torch.manual_seed(0)
    whole = torch.randn(6, 4, 3, 3) * 3 + 1
    reference = nn.BatchNorm2d(4)
    nn.init.uniform_(reference.weight); nn.init.uniform_(reference.bias)
    synced = nn.Sequential(nn.BatchNorm2d(4))
    synced[0].load_state_dict(reference.state_dict())
    convert_sync_batchnorm(synced, torch.device("cpu"))
    x_ref = whole.clone().requires_grad_()
    out_ref = reference(x_ref)
    (out_ref * torch.arange(out_ref.numel()).view_as(out_ref)).sum().backward()
    part = whole[rank * 3:(rank + 1) * 3].clone().requires_grad_()
    out = synced(part)
    (out * torch.arange(out_ref.numel()).view_as(out_ref)[rank * 3:(rank + 1) * 3]).sum().backward()
    torch.testing.assert_close(out, out_ref[rank * 3:(rank + 1) * 3])
    torch.testing.assert_close(part.grad, x_ref.grad[rank * 3:(rank + 1) * 3], rtol=1e-4, atol=1e-4)
    grad_w = process.all_reduce_sum(synced[0].weight.grad)
    torch.testing.assert_close(grad_w, reference.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(synced[0].running_var, reference.running_var)
    torch.testing.assert_close(synced[0].running_mean, reference.running_mean)

    # The whole model through the loop's hook (DDP + sync_bn), float64 so rounding cannot
    # hide an error: the averaged gradient of two half-batches equals one whole-batch
    # gradient, auxiliary heads included.
    import copy, functools
    import googlenet
    from googlenet.models import googlenet_loss
    criterion = functools.partial(nn.functional.cross_entropy, label_smoothing=0.1)
    torch.manual_seed(1)
    model = googlenet.create_model("googlenet_cifar", num_classes=10, in_chans=1, dropout=0.0,
                                   dropout_aux=0.0).double()
    reference = copy.deepcopy(model)
    images, labels = torch.randn(8, 1, 16, 16, dtype=torch.float64), torch.arange(8) % 10
    googlenet_loss(reference(images), labels, criterion, 0.3).backward()
    wrapped = DistributedProcess(rank=rank, world_size=world, sync_bn=True).wrap_model(model)
    half = slice(rank * 4, (rank + 1) * 4)
    googlenet_loss(wrapped(images[half]), labels[half], criterion, 0.3).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=name)
    dist.destroy_process_group()
    print(f"rank {rank} ok")
""")


def test_collectives_and_cpu_sync_batchnorm(tmp_path):
    script = tmp_path / "collectives.py"
    script.write_text(COLLECTIVES_SCRIPT)
    done = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
                _env(tmp_path), timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "rank 0 ok" in done.stdout and "rank 1 ok" in done.stdout


def test_resume_keeps_the_global_batch_on_another_process_count():
    config = TrainConfig(batch_size=64, accum_steps=2)
    assert global_batch(config, 4) == 512
    assert rescale_for_world_size(config, 4, 4) is config
    # Fewer processes: more accumulation, the per-process batch (GPU memory, BN batch) kept.
    fewer = rescale_for_world_size(config, 4, 2)
    assert (fewer.batch_size, fewer.accum_steps, global_batch(fewer, 2)) == (64, 4, 512)
    more = rescale_for_world_size(config, 4, 8)
    assert (more.batch_size, more.accum_steps) == (64, 1)
    # More processes than micro-batches: the per-process batch shrinks instead.
    many = rescale_for_world_size(config, 4, 16)
    assert (many.batch_size, many.accum_steps, global_batch(many, 16)) == (32, 1, 512)
    with pytest.raises(UserError, match="cannot be split evenly"):
        rescale_for_world_size(config, 4, 3)


def test_nproc_flag_mistakes_end_before_launching(tmp_path):
    bad = _run([sys.executable, "-m", "googlenet", "train", "--nproc", "2", "--set", "accum_steps=0"],
               _env(tmp_path), timeout=60)
    assert bad.returncode == 2 and "accum_steps must be positive" in bad.stderr
    assert "torch.distributed" not in bad.stderr and bad.stderr.count("\n") == 1


@pytest.mark.parametrize("under_nohup", [False, True])
def test_nproc_under_nohup_leaves_sighup_ignored(monkeypatch, under_nohup):
    """`nohup googlenet train --nproc 2 &`: torchrun's agent would take SIGHUP over and pass it on,
    stopping the job when the terminal closes; under nohup it is left out of the agent's signals."""
    import signal

    import torch.distributed.run as torchrun

    from googlenet.train import distributed

    seen = []
    monkeypatch.setattr(torchrun, "run", lambda launch: seen.append((launch.signals_to_handle,
                                                                     signal.getsignal(signal.SIGHUP))))
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN if under_nohup else signal.SIG_DFL)
    try:
        assert distributed.launch_local(2, ["--epochs", "1"]) == 0
        after = signal.getsignal(signal.SIGHUP)
    finally:
        signal.signal(signal.SIGHUP, previous)
    (handled, during), = seen
    assert ("SIGHUP" in handled) != under_nohup
    assert during == after == (signal.SIG_IGN if under_nohup else signal.SIG_DFL)


@pytest.mark.parametrize("signal_name, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_stop_request_on_one_rank_stops_every_rank_at_the_same_step(tmp_path, data, signal_name, code):
    """The signal reaches rank 1 only, during step 6 of 12; each step's flags are read a step late
    (the host never waits for the GPU), yet both ranks must agree on one step, save one
    checkpoint there, and end, rank 0 reporting the signal rank 1 got; --resume then finishes the run."""
    run_dir = tmp_path / "ddp"
    stopped = _run(_command(data, 8, 3, "--nproc", "2", "--out", str(run_dir)),
                   _env(tmp_path, **{FAIL_HOOK_ENV: f"1:5:{signal_name.lower()}"}), timeout=120)
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == code, output[-3000:]  # 128 + the signal, as for one process
    assert output.count(f"stopped by {signal_name} at step 7") == 1, output[-3000:]  # said once, by the launcher
    assert "ChildFailedError" not in output and "failed" not in output  # a requested stop is not a crash
    state = _checkpoint(run_dir)
    assert (state["epoch"], state["step"]) == (1, 7)
    if signal_name == "SIGINT":
        return  # resuming is the same after either
    resumed = _run([sys.executable, "-m", "googlenet", "train", "--resume", str(run_dir)], _env(tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    assert _checkpoint(run_dir)["step"] == 12 and (run_dir / "model.safetensors").is_file()
