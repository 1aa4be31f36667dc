"""The training loop in-process on tiny data: outputs of a run, budget fitting, fine-tuning, freezing."""
from __future__ import annotations

import csv

import pytest
import torch

import googlenet
from googlenet.cli import main
from googlenet.errors import UserError
from googlenet.train import Process, resolve_config, train
from googlenet.train.setup import LRSchedule, build_model, freeze_until

TINY = {"limit_train": 48, "limit_test": 24, "batch_size": 16, "input_size": 12, "device": "cpu"}


@pytest.fixture
def fmnist_dir(tmp_path, monkeypatch, fake_fmnist):
    monkeypatch.setenv("GOOGLENET_CACHE", str(tmp_path / "cache"))
    return fake_fmnist(tmp_path / "fm", n_train=48, n_test=24)


def test_a_run_writes_everything(fmnist_dir, tmp_path):
    config = resolve_config(flags={**TINY, "data": str(fmnist_dir), "epochs": 2},
                            overrides=["lr=0.05", "tensorboard=true"])
    result = train(config, out=tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "last.pt", "best.pt", "model.safetensors", "curves.png",
                 "confusion.png", "errors.png"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and float(rows[-1]["test_top1"]) == pytest.approx(result.top1, abs=1e-3)
    assert result.test_images == 24 and 0 <= result.top1 <= 100
    model = googlenet.load_weights(run / "model.safetensors")
    meta = model.meta
    assert meta["class_names"][0] == "T-shirt/top" and meta["input_size"] == meta["resize"] == 12
    assert meta["mean"] == [0.286] and meta["dataset"] == "fashion-mnist"
    assert model.model_options["in_chans"] == 1 and model.model_options["num_classes"] == 10
    saved = torch.load(run / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "ema", "rng", "epoch", "step", "config"} <= set(saved)
    assert saved["config"]["lr"] == 0.05 and saved["epoch"] == 2


def test_budget_fits_the_whole_schedule(fmnist_dir, tmp_path):
    config = resolve_config(flags={**TINY, "data": str(fmnist_dir), "budget": "12s"})
    result = train(config, out=tmp_path / "run")
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    plan = saved["plan"]
    assert saved["step"] == plan["total_steps"] == plan["epoch_ends"][-1] >= 6
    assert float(result.history[-1]["lr"]) == pytest.approx(config.lr * config.final_lr_scale, rel=0.05)
    assert result.seconds < 12 * 3  # generous: other work shares this machine


def test_schedule_shapes():
    c = resolve_config()
    one = LRSchedule(c, total_steps=100, steps_per_epoch=10)
    assert one(0) == pytest.approx(0.04) and one(20) == pytest.approx(1.0) and one(100) == pytest.approx(0.01)
    assert one(10) < one(20) > one(60)
    paper = LRSchedule(resolve_config("paper"), total_steps=1000, steps_per_epoch=10)
    assert paper(79) == 1.0 and paper(80) == pytest.approx(0.96) and paper(160) == pytest.approx(0.96 ** 2)


def test_finetune_replaces_classifier_and_freezes(tmp_path, capsys):
    source = googlenet.create_model("googlenet_cifar", num_classes=10, in_chans=1)
    googlenet.save_weights(source, tmp_path / "w.safetensors")
    config = resolve_config(flags={"weights": str(tmp_path / "w.safetensors"), "freeze": "4e"})
    messages = []
    model = build_model(config, num_classes=3, in_chans=1, say=messages.append)
    assert "replacing the classifier and auxiliary heads" in messages[0] and "10 -> 3" in messages[0]
    assert model.fc.out_features == 3 and model.aux1.fc2.out_features == 3
    assert model.model_options["num_classes"] == 3
    assert torch.equal(model.conv1.conv.weight, source.conv1.conv.weight)
    frozen = freeze_until(model, "4e")
    assert frozen[-1] == "inception4e"
    assert not any(p.requires_grad for p in model.inception4e.parameters())
    assert all(p.requires_grad for p in model.inception5a.parameters()) and model.fc.weight.requires_grad
    with pytest.raises(UserError, match="not a module"):
        freeze_until(model, "6a")


def test_frozen_layers_do_not_change_in_training(fmnist_dir, tmp_path):
    source = googlenet.create_model("googlenet_cifar", num_classes=10, in_chans=1)
    googlenet.save_weights(source, tmp_path / "w.safetensors")
    config = resolve_config(flags={**TINY, "data": str(fmnist_dir), "epochs": 1,
                                   "weights": str(tmp_path / "w.safetensors"), "freeze": "3b"},
                            overrides=["ema=false"])
    train(config, out=tmp_path / "run")
    tuned = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    before = source.state_dict()
    assert torch.equal(tuned["inception3b.branch1.conv.weight"], before["inception3b.branch1.conv.weight"])
    assert torch.equal(tuned["conv1.bn.running_mean"], before["conv1.bn.running_mean"])  # BN stats frozen too
    assert not torch.equal(tuned["inception4a.branch1.conv.weight"], before["inception4a.branch1.conv.weight"])


def test_only_the_main_process_writes(fmnist_dir, tmp_path):
    config = resolve_config(flags={**TINY, "data": str(fmnist_dir), "epochs": 1})
    train(config, out=tmp_path / "rank1", process=Process(rank=1, world_size=2))
    assert not (tmp_path / "rank1").exists()


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from googlenet.data import datasets

    monkeypatch.setenv("GOOGLENET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "none"))
    monkeypatch.setattr(datasets, "download_fashion_mnist", lambda root: (_ for _ in ()).throw(OSError("offline")))
    assert main(["train", "--out", str(tmp_path / "x"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "dataset-fashion-mnist" in err
    assert main(["train", "--set", "lr_peak=1"]) == 2
    assert "did you mean 'lr'" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_progress_lines_without_a_terminal(fmnist_dir, tmp_path, capsys, monkeypatch):
    """Under a log file (no TTY) tqdm is silent; plain progress lines take its place."""
    from googlenet.train import loop

    monkeypatch.setattr(loop, "PLAIN_PROGRESS_EVERY_S", 0.0)  # every step
    config = resolve_config(flags={**TINY, "data": str(fmnist_dir), "epochs": 1})
    train(config, out=tmp_path / "run")
    lines = [line for line in capsys.readouterr().out.splitlines() if "img/s, " in line and " min" in line]
    assert lines, "no progress line was printed"
    done = [int(line.split(": ", 1)[1].split("/")[0]) for line in lines]
    assert done == sorted(done) and done[0] > 0


def test_a_new_batch_size_without_lr_gets_a_rescaling_note(fmnist_dir, tmp_path, capsys):
    common = ["train", "--data", str(fmnist_dir), "--limit-train", "32", "--limit-test", "16", "--epochs", "1",
              "--input-size", "12", "--device", "cpu"]
    assert main([*common, "--batch-size", "16", "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "keeps the fmnist recipe's lr 0.2, set for batch 128" in out and "--lr 0.025" in out
    assert main([*common, "--batch-size", "16", "--lr", "0.025", "--out", str(tmp_path / "b")]) == 0
    assert "rescaling" not in capsys.readouterr().out
