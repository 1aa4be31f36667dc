"""`googlenet bench --quick --json` on tiny settings: the report's shape and arithmetic."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

from googlenet import bench
from googlenet.bench import Settings, format_table, time_interleaved
from googlenet.cli import main

ROW_KEYS = {"case", "device", "batch", "precision", "ours", "torchvision", "unit", "speedup"}
TINY = ["--input-size", "32", "--throughput-batch", "2", "--train-batch", "4", "--train-input-size", "8",
        "--repeats", "2"]


def test_bench_quick_json_report(capsys):
    assert main(["bench", "--device", "cpu", "--quick", "--json", *TINY]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"machine", "torch", "rows"} <= set(report)
    assert report["torch"] == torch.__version__
    cases = [r["case"] for r in report["rows"]]
    assert cases == ["inference latency 32px", "inference 32px", "train googlenet_cifar 8px"]
    for row in report["rows"]:
        assert ROW_KEYS <= set(row)
        assert row["device"] == "cpu"
        assert row["ours"] > 0 and row["torchvision"] > 0
        if row["unit"] == "ms":  # time: speedup = their time / ours
            ratio = row["torchvision"] / row["ours"]
        else:  # img/s: the same ratio of times
            assert row["unit"] == "img/s"
            ratio = row["ours"] / row["torchvision"]
        assert row["speedup"] == pytest.approx(ratio, rel=2e-3)
        # Every contender's figure is kept; the row's two are the best of each side.
        assert row["timings"][row["ours_path"]] == row["ours"]
        assert row["timings"][row["torchvision_path"]] == row["torchvision"]
    latency, throughput, train = report["rows"]
    assert (latency["batch"], throughput["batch"], train["batch"]) == (1, 2, 4)
    # Inference rows are checked for exactness against torchvision on the same input.
    for row in (latency, throughput):
        assert row["precision"] == "fp32" and row["exact"] is True
        assert 0 <= row["max_abs_diff"] < 1e-3
        assert row["torchvision_path"] in ("eager NCHW", "eager channels_last")
    assert "torchvision has no 28-px" in train["reference"]


def test_bench_table_names_every_case():
    from googlenet.bench import run_bench

    s = Settings(input_size=32, throughput_batch=2, train_batch=2, train_input_size=8, warmup=1,
                 repeats=1, batch_repeats=1, bf16_cpu_row=False)
    report = run_bench("cpu", quick=True, settings=s)
    table = format_table(report)
    for row in report["rows"]:
        assert row["case"] in table
    assert "speedup" in table.splitlines()[0]


def test_time_interleaved_takes_medians():
    calls = {"a": 0, "b": 0}

    def a():
        calls["a"] += 1

    def b():
        calls["b"] += 1
        sum(range(20000))

    times = time_interleaved({"a": a, "b": b}, torch.device("cpu"), warmup=2, repeats=5)
    assert calls == {"a": 7, "b": 7}
    assert 0 < times["a"] < times["b"]
    # The CPU settle pause happens before each call, outside the timed interval.
    assert times["a"] < bench.CPU_SETTLE_S / 2


def test_bench_cuda_without_gpu_is_one_line_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["bench", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU" in err[0]


def test_gpu_script_without_cuda_says_so_and_exits_zero(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    script = Path(__file__).resolve().parents[1] / "bench" / "gpu.sh"
    # Only OUT from the script's own knobs (a dry run may have set DEVICE=cpu and friends).
    knobs = ("DEVICE", "STEPS", "WORK", "SEEDS", "DEADLINE_S", "BENCH_ARGS", "TRAIN_ARGS", "SKIP_BENCH",
             "SKIP_FMNIST", "PAPER_BUDGET", "FMNIST_DATA")
    env = {**{k: v for k, v in os.environ.items() if k not in knobs}, "OUT": str(tmp_path),
           "WORK": str(tmp_path / "work")}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    said = [line for line in done.stdout.splitlines() if "no CUDA GPU" in line]
    assert len(said) == 1 and "nothing measured" in said[0]  # one line says it all
    assert "no CUDA GPU visible" in (tmp_path / "log").read_text()


TINY_SETTINGS = Settings(input_size=32, throughput_batch=2, train_batch=2, train_input_size=8, warmup=1,
                         repeats=1, batch_repeats=1, bf16_cpu_row=False)


def test_bench_runs_only_the_cases_asked_for(monkeypatch):
    """bench/gpu.sh runs each case in its own process (own timeout) through the env variable."""
    from googlenet.bench import CASES_ENV, case_keys, run_bench
    from googlenet.errors import UserError

    assert case_keys("cpu") == ["latency", "throughput", "train", "bf16-latency"]
    assert case_keys("cuda") == ["latency", "throughput", "train"]
    report = run_bench("cpu", settings=TINY_SETTINGS, cases=["train"])
    assert [r["case"] for r in report["rows"]] == ["train googlenet_cifar 8px"]
    monkeypatch.setenv(CASES_ENV, "latency")
    assert [r["case"] for r in run_bench("cpu", settings=TINY_SETTINGS)["rows"]] == ["inference latency 32px"]
    with pytest.raises(UserError, match="unknown bench case 'inference'.*latency, throughput, train"):
        run_bench("cpu", settings=TINY_SETTINGS, cases=["inference"])


def test_a_contender_that_fails_to_compile_costs_itself_not_the_row(monkeypatch):
    """On the GPU each row compiles (a minute each there); an inductor failure must not lose the
    row's other timings: the failed contender is dropped, or ours timed uncompiled, with a note."""
    def broken_compile(model, *args, **kwargs):
        def call(*a, **k):
            raise RuntimeError("inductor exploded\nlong traceback")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: setattr(self, "forward", broken_compile(self)))
    s = dataclasses.replace(TINY_SETTINGS, input_size=32)
    row = bench.bench_inference(torch.device("cpu"), 2, s, compile_ours=True, compile_tv=True)
    assert row.ours > 0 and row.torchvision > 0 and row.exact is True
    assert "compiled" not in row.ours_path and row.torchvision_path in ("eager NCHW", "eager channels_last")
    assert row.notes == ["compiling ours failed (inductor exploded); not compared",
                         "compiling torchvision failed (inductor exploded); not compared"]
    s = dataclasses.replace(s, train_batch=2, input_size=32, compile_torchvision=True)
    train = bench.bench_train_224(torch.device("cpu"), s, precision="fp32", compile_ours=True)
    assert train.ours > 0 and "compiled" not in train.ours_path and "compiled" not in train.torchvision_path
    assert [n.split(" (")[0] for n in train.notes] == ["compiling ours failed", "compiling torchvision failed"]


def test_bf16_rows_name_torchvision_held_in_bf16_and_flag_a_path_that_computes_something_else():
    s = dataclasses.replace(TINY_SETTINGS, input_size=32)
    row = bench.bench_inference(torch.device("cpu"), 1, s, "bf16", counts=False)
    assert row.notes == [] and row.max_abs_diff < 1  # the same network in bf16 twice: close
    contenders = ("eager NCHW", "eager channels_last", "bf16 weights, channels_last")
    assert row.torchvision_path in contenders
    logits = torch.randn(4, 1000) * 5
    assert bench._bf16_check(logits + 0.01, logits) == []
    wrong = bench._bf16_check(logits.flip(1), logits)
    assert len(wrong) == 1 and wrong[0].startswith("CHECK: ours differs from torchvision")


# ---------------------------------------------------------------- CUDA (skipped without a GPU)
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
def test_cuda_rows_run_at_tiny_size():
    """Every CUDA case's code path in seconds (no compilation): bf16 latency with CUDA graphs
    for both contenders, batch inference, the 224-px training step with aux heads."""
    dev = torch.device("cuda")
    s = dataclasses.replace(TINY_SETTINGS, input_size=64, throughput_batch=4, train_batch=4,
                            compile_torchvision=False)
    latency = bench.bench_inference(dev, 1, s, "bf16", cuda_graphs=True)
    assert latency.ours > 0 and latency.ours_path.endswith("CUDA graph") and not latency.notes, latency
    assert latency.max_abs_diff is not None and math.isfinite(latency.max_abs_diff)
    throughput = bench.bench_inference(dev, 4, s, "bf16")
    assert throughput.unit == "img/s" and throughput.ours > 0
    train = bench.bench_train_224(dev, s, compile_ours=False)
    assert train.unit == "img/s" and train.ours > 0 and train.torchvision > 0
