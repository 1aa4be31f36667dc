"""The training loop in-process on tiny data: outputs of a run, budget fitting, fine-tuning, freezing."""
from __future__ import annotations

import csv
import re
import time
from dataclasses import asdict

import pytest
import torch

import googlenet
from googlenet.cli import main
from googlenet.errors import UserError
from googlenet.train import Process, resolve_config, train
from googlenet.train.setup import LRSchedule, build_model, build_optimizer, freeze_until

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
    with pytest.raises(UserError, match="already holds a finished run .*--weights .*model.safetensors"):
        train(config, out=run)  # not "continue it with --resume": there is nothing to resume
    (run / "last.pt").unlink()  # model.safetensors alone: someone's weights, not a run to continue
    with pytest.raises(UserError, match="already holds model.safetensors .*would overwrite it"):
        train(config, out=run)


def test_with_a_per_epoch_test_subset_the_last_epoch_tests_everything_once(fmnist_dir, tmp_path, monkeypatch):
    """Earlier epochs test the subset; the last tests all images, and that test is the final
    one (it used to test the subset, then all images again, outside the budget's plan)."""
    from googlenet.train.loop import Trainer

    limits = []
    evaluate = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate", lambda self, model, limit, **kw: limits.append(limit)
                        or evaluate(self, model, limit, **kw))
    config = resolve_config(flags={**TINY, "data": str(fmnist_dir), "epochs": 2}, overrides=["eval_subset=16"])
    train(config, out=tmp_path / "run")
    assert limits == [16, None]
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [r["test_images"] for r in rows] == ["16", "24"]


def test_budget_fits_the_whole_schedule(fmnist_dir, tmp_path):
    config = resolve_config(flags={**TINY, "data": str(fmnist_dir), "budget": "12s"})
    result = train(config, out=tmp_path / "run")
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    plan = saved["plan"]
    assert saved["step"] == plan["total_steps"] == plan["epoch_ends"][-1] >= 6
    assert float(result.history[-1]["lr"]) == pytest.approx(config.lr * config.final_lr_scale, rel=0.05)
    assert result.seconds < 12 * 3  # generous: other work shares this machine


def test_a_budget_mostly_spent_on_the_final_test_says_so(fmnist_dir, tmp_path, capsys, monkeypatch):
    """A new user's `--budget 1m` on a CPU: testing 10,000 images alone takes about a minute."""
    from googlenet.train import loop

    monkeypatch.setattr(loop.Trainer, "_measure_eval_rate", lambda self: 2.0)  # 24 test images: ~12 s
    config = resolve_config(flags={**TINY, "data": str(fmnist_dir), "budget": "12s"})
    train(config, out=tmp_path / "run")
    out = capsys.readouterr().out
    assert "note: the final test alone takes ~12 s of the 12-s budget (24 images at 2 img/s)" in out
    assert "--limit-test" in out


def test_the_final_test_note_never_suggests_more_test_images_than_the_run_has(fmnist_dir, tmp_path, capsys,
                                                                                  monkeypatch):
    """`--budget 0.001s --limit-test 32` was told '~0 s of the 0-s budget ... test on fewer images
    with --limit-test 256': the test batch size, more than the 32 images it tested."""
    from googlenet.train import loop

    monkeypatch.setattr(loop.Trainer, "_measure_eval_rate", lambda self: 0.2)  # 24 test images: ~120 s
    config = resolve_config(flags={**TINY, "data": str(fmnist_dir), "budget": "0.5s"})
    train(config, out=tmp_path / "run")
    note = [line for line in capsys.readouterr().out.splitlines() if "final test alone" in line]
    assert note == ["note: the final test alone takes ~120 s of the 0.5-s budget (24 images at 0.2 img/s), "
                    "so the run will train little and may overrun it; give a longer --budget"]


def test_freeze_without_weights_says_the_frozen_layers_are_random(fmnist_dir, tmp_path, capsys):
    """`--freeze 4e` with no --weights trained only stage 5 and the classifier on top of frozen
    random layers, and said only 'frozen: conv1 .. inception4e'."""
    config = resolve_config(flags={**TINY, "data": str(fmnist_dir), "epochs": 1, "freeze": "4e"})
    train(config, out=tmp_path / "run")
    assert ("note: no --weights, so the frozen layers keep their random initialisation and only what follows 4e "
            "learns; --freeze is for fine-tuning (--weights FILE|imagenet)") in capsys.readouterr().out


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_fused_optimizer_steps_like_the_per_tensor_one(optimizer):
    """build_optimizer picks torch's fused kernels (a CPU speed-up): same updates as the
    textbook per-tensor loop, to float rounding, and the same groups and weight decay."""
    import copy

    config = resolve_config(overrides=[f"optimizer={optimizer}"])
    model = googlenet.create_model("googlenet_cifar_fast", num_classes=10, in_chans=1)
    reference = copy.deepcopy(model)
    fused = build_optimizer(model, config)
    assert all(group["fused"] for group in fused.param_groups)
    groups = [{"params": [p for p in reference.parameters() if p.ndim > 1], "weight_decay": config.weight_decay},
              {"params": [p for p in reference.parameters() if p.ndim <= 1], "weight_decay": 0.0}]
    plain = (torch.optim.AdamW(groups, lr=config.lr, foreach=False) if optimizer == "adamw" else
             torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, foreach=False))
    for step in range(3):
        for a, b in zip(model.parameters(), reference.parameters()):
            a.grad = torch.randn(a.shape, generator=torch.Generator().manual_seed(step)) * 0.01
            b.grad = a.grad.clone()
        fused.step()
        plain.step()
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


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


def test_weights_trained_at_another_size_get_a_note(tmp_path):
    """ImageNet-sized weights fine-tuned on 28-px images train, but the user should know."""
    source = googlenet.create_model("googlenet_tv", num_classes=10)
    source.meta = {"input_size": 224}
    googlenet.save_weights(source, tmp_path / "w.safetensors")
    config = resolve_config(flags={"weights": str(tmp_path / "w.safetensors"), "model": "googlenet_tv"})
    messages = []
    build_model(config, num_classes=10, in_chans=3, say=messages.append, input_size=28)
    assert messages == [f"note: {tmp_path / 'w.safetensors'} was trained on 224-px images and the data is 28 px; "
                        "--input-size 224 resizes the data to what the weights expect"]
    messages.clear()
    build_model(config, num_classes=10, in_chans=3, say=messages.append, input_size=160)  # close enough
    assert messages == []


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
    assert "no such run folder" in capsys.readouterr().err


@pytest.mark.parametrize("model, size, smallest", [("googlenet", 28, 31), ("googlenet_cifar", 3, 4)])
def test_images_too_small_for_the_network_are_one_line_before_training(fmnist_dir, tmp_path, capsys, model,
                                                                       size, smallest):
    """The paper's 224-px network on 28-px Fashion-MNIST: its last pools would get 0x0 maps."""
    code = main(["train", "--data", str(fmnist_dir), "--model", model, "--input-size", str(size), "--epochs", "1",
                 "--limit-train", "16", "--limit-test", "8", "--device", "cpu", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert f"{model} cannot run at {size}px: its pools need images of at least {smallest}px" in err
    assert f"--input-size {smallest}" in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_the_size_check_leaves_models_it_cannot_probe_to_the_real_run():
    """A layer without a meta-device kernel must not turn into a false "cannot run" verdict."""
    from googlenet.models import check_input_size

    class NoMeta(torch.nn.Module):
        def forward(self, x):
            if x.is_meta:
                raise NotImplementedError("no meta kernel for this op")
            return x

    check_input_size(NoMeta(), 28, 1, "custom")  # no error
    check_input_size(googlenet.create_model("googlenet_cifar", in_chans=1), 28, 1, "googlenet_cifar")


def test_progress_lines_without_a_terminal(fmnist_dir, tmp_path, capsys, monkeypatch):
    """Under a log file (no TTY) tqdm is silent; plain progress lines take its place."""
    from googlenet import progress

    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)  # every step
    config = resolve_config(flags={**TINY, "data": str(fmnist_dir), "epochs": 1})
    train(config, out=tmp_path / "run")
    out = capsys.readouterr().out.splitlines()
    lines = [line for line in out if line.startswith("  epoch") and "img/s, " in line]
    assert lines, "no progress line was printed"
    done = [int(line.split(": ", 1)[1].split("/")[0]) for line in lines]
    assert done == sorted(done) and done[0] > 0
    # "1.2 min" alone read as the time left as well as the time spent: both are named
    assert all(re.search(r"img/s, \d+\.\d min in, ~\d+\.\d min left$", line) for line in lines), lines


def test_progress_lines_of_a_many_epoch_run_say_how_long_the_whole_run_takes(fmnist_dir, tmp_path, capsys,
                                                                             monkeypatch):
    """`googlenet train` with no flags on a CPU is hours; the epoch's ETA alone did not say so.
    Every epoch but the last adds the run's time left; the last ends as before."""
    from googlenet import progress

    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)  # every step
    config = resolve_config(flags={**TINY, "data": str(fmnist_dir), "epochs": 2})
    train(config, out=tmp_path / "run")
    lines = [line for line in capsys.readouterr().out.splitlines() if "img/s, " in line and " min in" in line]
    first = [line for line in lines if "epoch 1/2" in line]
    last = [line for line in lines if "epoch 2/2" in line]
    assert first and last, lines
    assert all(re.search(r"min left, ~\d+\.\d (min|h) left in the whole run$", line) for line in first), first
    assert all(line.endswith("min left") for line in last), last


def test_a_new_batch_size_without_lr_gets_a_rescaling_note(fmnist_dir, tmp_path, capsys):
    common = ["train", "--data", str(fmnist_dir), "--limit-train", "32", "--limit-test", "16", "--epochs", "1",
              "--input-size", "12", "--device", "cpu"]
    assert main([*common, "--batch-size", "16", "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "a global batch of 16 keeps the fmnist recipe's lr 0.2, set for batch 128" in out and "--lr 0.025" in out
    assert main([*common, "--batch-size", "16", "--lr", "0.025", "--out", str(tmp_path / "b")]) == 0
    assert "rescaling" not in capsys.readouterr().out


def test_the_rescaling_note_goes_by_the_global_batch(monkeypatch, capsys):
    """`--nproc 2 --batch-size 64`: each process's 64 make the recipe's global 128, lr as set."""
    import argparse

    from googlenet.commands import train as train_command

    args = argparse.Namespace(lr=None, config=None, set=[], batch_size=64)
    for world, says in ((2, None), (4, "a global batch of 256 (64/process) keeps the fmnist recipe's lr 0.2")):
        monkeypatch.setenv("WORLD_SIZE", str(world))
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("LOCAL_RANK", "0")
        note = train_command._unscaled_lr_note(args, resolve_config(flags={"batch_size": 64}))
        assert (says in note and "--lr 0.4" in note) if says else note is None


def test_a_rejected_command_prints_no_note_and_leaves_no_run_folder(fmnist_dir, tmp_path, capsys):
    """A command stopped by the setup's checks (here: 28-px images for the 224-px network) says
    only why, and leaves no empty run folder behind, so the corrected command can reuse --out."""
    out_dir = tmp_path / "runs" / "first"
    args = ["train", "--data", str(fmnist_dir), "--limit-train", "32", "--limit-test", "16", "--epochs", "1",
            "--device", "cpu", "--batch-size", "16", "--out", str(out_dir)]
    assert main([*args, "--model", "googlenet"]) == 2
    said = capsys.readouterr()
    assert "cannot run at 28px" in said.err and "note:" not in said.out
    assert not (tmp_path / "runs").exists()  # the folders the run made, parents included
    assert main([*args, "--model", "googlenet_cifar_fast", "--input-size", "12"]) == 0
    assert "note: a global batch of 16" in capsys.readouterr().out
    # A folder that existed before the run is the user's: it stays, as it was, after a rejection.
    (tmp_path / "mine").mkdir()
    assert main([*args[:-1], str(tmp_path / "mine"), "--model", "googlenet"]) == 2
    assert (tmp_path / "mine").is_dir() and list((tmp_path / "mine").iterdir()) == []


def test_an_unknown_model_is_rejected_with_the_config():
    with pytest.raises(UserError, match="unknown model 'googlenet_cifar_fats' \\(did you mean 'googlenet_cifar_fast'"):
        resolve_config(flags={"model": "googlenet_cifar_fats"})


def test_step_flags_are_read_a_step_late_and_all_before_the_epoch_ends(fmnist_dir, tmp_path, monkeypatch):
    """--on-nan stop (the default) reads step k's loss/stop flags only after step k+1's forward
    pass is queued, so on a GPU the host never waits for the step it has just queued; the
    last step's flags are still read before the epoch's evaluation and checkpoint."""
    from googlenet.train import guard, loop

    events = []
    real_take, real_save = guard.LateRead.take, loop.Trainer._save_checkpoints

    def take(self):
        read = real_take(self)
        if read is not None:
            events.append(("read", read[1][0]))
        return read

    def save(self, best):
        events.append(("save", self.step))
        return real_save(self, best)

    monkeypatch.setattr(guard.LateRead, "take", take)
    monkeypatch.setattr(loop.Trainer, "_save_checkpoints", save)
    real_init = loop.Trainer.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.model.register_forward_pre_hook(
            lambda module, inputs: events.append(("forward", None)) if module.training else None)

    monkeypatch.setattr(loop.Trainer, "__init__", init)
    train(resolve_config(flags={**TINY, "data": str(fmnist_dir), "epochs": 2}), out=tmp_path / "run")
    # 3 steps per epoch: forward 0, forward 1, read 0, forward 2, read 1, read 2, save, ...
    expected = []
    for epoch in range(2):
        first = 3 * epoch
        expected += [("forward", None), ("forward", None), ("read", first), ("forward", None), ("read", first + 1),
                     ("read", first + 2), ("save", first + 3)]
    assert events == expected


def test_budget_calibration_times_blocks_of_steps_and_reports_seconds_per_step(monkeypatch):
    """On a GPU the budget's step time is measured over blocks of steps (the host queues one
    while the GPU runs another, as in training); the result is still seconds per step."""
    from types import SimpleNamespace

    from googlenet.train import budget, loop

    taken = []

    def fake_steps(epoch, steps, desc, show=True):
        taken.append(steps)
        for _ in range(steps):
            time.sleep(0.02)

    monkeypatch.setitem(budget.CALIBRATION_BLOCK, "cpu", 3)
    trainer = SimpleNamespace(device=torch.device("cpu"), process=Process(), _train_steps=fake_steps,
                              say=lambda message: None)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # one setting: no thread trial
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # and the session's count untouched
    step_s = loop.Trainer._calibrate(trainer, 12, budget=60.0)
    assert taken == [3, 3, 3, 3]
    assert 0.02 <= step_s < 0.035


def test_budget_replan_after_epoch_2_refits_steps_and_merges_epochs_when_checkpoints_are_costly():
    """After epoch 2 a budget run refits the rest from what it measured. Here an epoch's test
    and checkpoint cost 3 s (the first plan could not know): 8 more epochs would spend 24 s of
    the 71 s left on them, so 3 longer epochs remain (<= 15% of the time left), and the steps
    grow to the +50% cap because steps turned out much cheaper (0.3 s) than planned."""
    from types import SimpleNamespace

    from googlenet.train import loop

    said = []
    trainer = SimpleNamespace(
        config=SimpleNamespace(budget="100s", budget_seconds=lambda: 100.0, warmup=0.2),
        plan=loop.Plan(10, 100, [10 * (e + 1) for e in range(10)], None, 10.0), epoch=2, step=20,
        elapsed=lambda: 20.0, _final_eval_s=lambda: 2.0, process=Process(), say=said.append,
        schedule=LRSchedule(resolve_config(), total_steps=100, steps_per_epoch=10))
    lr_factors = [trainer.schedule(step) for step in range(18, 23)]
    loop.Trainer._replan_budget(trainer, train_s=3.0, cycle_overhead_s=3.0)
    # time left 100 - 20 - 2 - 7 (margin) = 71 s; 3 epochs x 3 s; (71 - 9) / 0.3 = 206 steps -> capped at 150
    assert (trainer.plan.epochs, trainer.plan.total_steps) == (5, 150)
    assert trainer.plan.epoch_ends == [10, 20, 63, 107, 150] and trainer.schedule.total_steps == 150
    assert "re-planned after epoch 2" in said[0] and "(planned 100 in 10)" in said[0]
    # warm-up still ends at step 20: no jump in the learning rate around the re-plan (step 20)
    assert trainer.plan.warmup_steps == 20
    assert [trainer.schedule(step) for step in range(18, 21)] == lr_factors[:3]
    assert abs(trainer.schedule(21) - lr_factors[3]) < 0.01

    on_course = SimpleNamespace(**{**vars(trainer), "plan": loop.Plan(10, 100, [10 * (e + 1) for e in range(10)],
                                                                     None, 10.0)})
    on_course.schedule = LRSchedule(resolve_config(), total_steps=100, steps_per_epoch=10)
    # time left 71 s, 8 epochs x 0.2 s: 69.4 s for 80 more steps of 0.8675 s, as planned
    loop.Trainer._replan_budget(on_course, train_s=10 * 0.8675, cycle_overhead_s=0.2)
    assert on_course.plan.total_steps == 100 and on_course.plan.epochs == 10 and len(said) == 1


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
@pytest.mark.parametrize("measured_step_s", [0.5, 1.6])  # cheaper than planned: more steps; dearer: fewer
def test_a_replan_during_the_decay_keeps_the_learning_rate_and_stretches_the_rest(schedule, measured_step_s):
    """A re-plan past warm-up changes the total steps; the rate at the re-plan's step stays what
    it was (no jump), then decays smoothly (never rises) to the same final rate at the new end."""
    from types import SimpleNamespace

    from googlenet.train import loop

    config = resolve_config(flags={"schedule": schedule, "warmup": 0.1})
    plan = loop.Plan(10, 100, [10 * (e + 1) for e in range(10)], None, 10.0)
    trainer = SimpleNamespace(
        config=SimpleNamespace(budget="100s", budget_seconds=lambda: 100.0, warmup=0.1), plan=plan, epoch=2,
        step=20, elapsed=lambda: 20.0, _final_eval_s=lambda: 2.0, process=Process(), say=lambda line: None,
        schedule=LRSchedule(config, total_steps=100, steps_per_epoch=10))
    before = trainer.schedule(20)
    final = trainer.schedule(100)
    loop.Trainer._replan_budget(trainer, train_s=10 * measured_step_s, cycle_overhead_s=0.0)
    total = trainer.plan.total_steps
    assert total != 100 and (total > 100) == (measured_step_s < 0.8)
    assert trainer.plan.decay_resumed_at == 20 and trainer.plan.decay_progress_then == pytest.approx(10 / 90)
    factors = [trainer.schedule(step) for step in range(20, total + 1)]
    assert factors[0] == pytest.approx(before, abs=1e-12)
    assert all(b <= a + 1e-12 for a, b in zip(factors, factors[1:]))
    assert factors[-1] == pytest.approx(final, abs=1e-12)
    # A resumed run rebuilds its schedule from the saved plan and computes the same rates.
    rebuilt = LRSchedule(config, total_steps=10 ** 9, steps_per_epoch=10)
    rebuilt.follow(loop.Plan(**asdict(trainer.plan)))  # as a checkpoint stores and restores it
    assert [rebuilt(step) for step in range(20, total + 1)] == factors


def test_the_python_api_names_a_busy_or_unstarted_run_folder_as_the_cli_does(fmnist_dir, tmp_path):
    from googlenet.train import guard

    config = resolve_config(flags={**TINY, "data": str(fmnist_dir), "epochs": 1})
    run = tmp_path / "run"
    with guard.RunLock(run):  # another train holds it
        with pytest.raises(UserError, match=rf"{run} is in use by another googlenet train \(pid \d+\)"):
            train(config, out=run)
    (run / "config.yaml").write_text("epochs: 1\n")  # killed before its first checkpoint
    with pytest.raises(UserError, match="stopped before its first checkpoint: nothing to resume"):
        train(config, resume=run)
