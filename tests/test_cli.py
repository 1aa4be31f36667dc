"""googlenet.cli: every help page renders, and every example it shows parses as written."""
from __future__ import annotations

import shlex

import pytest

from googlenet.cli import build_parser, main

COMMANDS = ["list-models", "summary", "import-torchvision", "train", "eval", "predict", "export", "bench"]


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _examples(text: str) -> list[str]:
    """The example commands of a help page: indented lines that start with `googlenet`."""
    return [line.split("#")[0].strip() for line in text.splitlines() if line.startswith("  googlenet ")]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_page_renders(command, capsys):
    text = _help(capsys, command)
    assert f"usage: googlenet {command}" in text


@pytest.mark.parametrize("command", ["train", "eval", "predict", "export"])
def test_examples_are_one_command_per_line_and_parse(command, capsys):
    text = _help(capsys, command)
    examples = _examples(text)
    assert len(examples) >= 2, text
    parser = build_parser()
    for example in examples:
        argv = shlex.split(example)[1:]
        assert " | " not in example  # no run-on list that reads like a shell pipe
        args = parser.parse_args(argv)  # a wrong flag in an example exits here
        assert args.command == argv[0]


def test_top_level_help_shows_a_quick_start_that_parses(capsys):
    text = _help(capsys)
    examples = _examples(text)
    assert any(e.startswith("googlenet train ") and "--budget 10m" in e for e in examples), text
    for example in examples:
        build_parser().parse_args(shlex.split(example)[1:])


def test_flags_without_help_are_few(capsys):
    # Every option of the commands users run most says what it does.
    for command in ("train", "eval", "predict", "export"):
        parser = build_parser()
        sub = next(a for a in parser._actions if a.dest == "command").choices[command]
        bare = [a.option_strings[0] for a in sub._actions if a.option_strings and not a.help]
        assert not bare, f"{command}: {bare} have no help text"


def test_import_torchvision_to_an_unwritable_out_is_one_line(tmp_path, capsys):
    import torch

    import googlenet

    pth = tmp_path / "tv.pth"
    torch.save(googlenet.create_model("googlenet_tv", num_classes=3, aux_logits=False).state_dict(), pth)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("a file, not a folder")
    code = main(["import-torchvision", str(pth), str(a_file / "tv.safetensors")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert f"cannot write {a_file / 'tv.safetensors'}" in err and "pick another OUT" in err


def test_a_negative_budget_reaches_the_budget_check(capsys):
    """`--budget -5m` looks like an option to argparse ("expected one argument"); it is handed to
    the budget's own check instead, which says what a duration looks like."""
    assert main(["train", "--budget", "-5m"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["googlenet train: error: the duration must be positive, not '-5m'; write e.g. 90s, 10m or 1.5h"]
    assert main(["train", "--budget", "0"]) == 2  # a bare number is seconds: readable, but not positive
    assert "the duration must be positive, not '0'" in capsys.readouterr().err
    assert main(["train", "--budget", "abc"]) == 2
    assert "cannot read the duration 'abc'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a missing value is still argparse's to report
        main(["train", "--budget"])
    assert "--budget: expected one argument" in capsys.readouterr().err


@pytest.mark.parametrize("length", [["--epochs", "5", "--budget", "1m"], ["--set", "epochs=5", "--budget", "1m"],
                                    ["--epochs", "5", "--set", "budget=1m"]])
def test_epochs_with_a_budget_is_refused_not_silently_dropped(length, capsys, monkeypatch):
    """`--epochs 5 --budget 1m` trained whatever the budget fitted (1 epoch here) and never
    said --epochs was ignored."""
    import googlenet.train

    def no_training(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr(googlenet.train, "train", no_training)
    assert main(["train", *length]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["googlenet train: error: --epochs 5 and --budget 1m both set how long the run is, and the "
                   "budget picks the epochs itself; give one of them"]


def test_import_torchvision_refuses_to_overwrite_its_input_and_names_a_folder(tmp_path, capsys):
    """`import-torchvision tv.pth tv.pth` replaced the user's .pth with safetensors without a
    word; a folder as the .pth was reported as 'weights file not found'."""
    import torch

    import googlenet

    pth = tmp_path / "tv.pth"
    torch.save(googlenet.create_model("googlenet_tv", num_classes=3, aux_logits=False).state_dict(), pth)
    before = pth.read_bytes()
    assert main(["import-torchvision", str(pth), str(tmp_path / "." / "tv.pth")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"googlenet import-torchvision: error: OUT {tmp_path / 'tv.pth'} must end in .safetensors (the file "
        f"written is safetensors weights), e.g. {tmp_path / 'tv.safetensors'}"]
    assert pth.read_bytes() == before
    # An OUT named for another format was written as safetensors, then refused by predict/export.
    assert main(["import-torchvision", str(pth), str(tmp_path / "tv.onnx")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err and not (tmp_path / "tv.onnx").exists()
    misnamed = tmp_path / "tv.safetensors"  # a torchvision .pth under a .safetensors name
    misnamed.write_bytes(before)
    assert main(["import-torchvision", str(misnamed), str(tmp_path / "." / "tv.safetensors")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"googlenet import-torchvision: error: OUT {misnamed} is the input file itself and would be "
        f"overwritten; pick another OUT file, e.g. {tmp_path / 'tv_tv.safetensors'}"]
    assert misnamed.read_bytes() == before
    assert main(["import-torchvision", str(tmp_path), str(tmp_path / "out.safetensors")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"googlenet import-torchvision: error: {tmp_path} is a folder; give the torchvision .pth file itself"]


def test_resume_without_a_checkpoint_is_the_error_alone(tmp_path, capsys):
    """`--resume NOPE --epochs 3` printed 'note: ... ignoring --epochs' before saying there is
    nothing to resume: a note about a run that cannot start."""
    assert main(["train", "--resume", str(tmp_path / "nope"), "--epochs", "3"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [
        f"googlenet train: error: no such run folder: {tmp_path / 'nope'}; --resume takes a run folder holding last.pt"]
    (tmp_path / "empty").mkdir()
    assert main(["train", "--resume", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"googlenet train: error: no checkpoint at {tmp_path / 'empty' / 'last.pt'}; --resume takes a run folder holding last.pt"]


def test_resume_of_a_run_killed_while_loading_its_data_says_to_start_it_again(tmp_path, capsys):
    """A run killed before it wrote config.yaml leaves RUN/.lock alone: no config to suggest."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("12345")
    assert main(["train", "--resume", str(run)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"googlenet train: error: {run} stopped before its first checkpoint: nothing to resume; start it again "
        f"with the command that started it (--out {run} is free to reuse)"]


def test_a_run_folder_another_train_holds_is_refused_as_in_use_not_sent_to_resume(tmp_path, capsys):
    """`train --out RUN` on a run still training said "already holds a run; continue it with
    --resume RUN", and that advice then failed with "in use by another googlenet train"."""
    import os

    from googlenet.train.guard import RunLock

    run = tmp_path / "run"
    in_use = (f"googlenet train: error: {run} is in use by another googlenet train (pid {os.getpid()}); wait for it "
              "to finish or stop it, or pick another --out")
    run.mkdir()
    (run / "config.yaml").write_text("epochs: 1\n")
    (run / "last.pt").write_bytes(b"a checkpoint")
    with RunLock(run):  # the other train
        assert main(["train", "--out", str(run), "--epochs", "1"]) == 2
        captured = capsys.readouterr()
        assert captured.err.strip().splitlines() == [in_use] and captured.out == ""
        (run / "last.pt").unlink()  # the other train before its first checkpoint: not "stopped before" it
        assert main(["train", "--resume", str(run)]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [in_use]
    # Once nothing holds the folder, --out points to --resume again.
    (run / "last.pt").write_bytes(b"a checkpoint")
    assert main(["train", "--out", str(run), "--epochs", "1"]) == 2
    assert f"already holds a run; continue it with --resume {run}" in capsys.readouterr().err


def test_train_help_says_where_the_config_keys_and_budget_units_are(capsys):
    """--set said 'override any config key' without saying where the keys are listed, and
    --budget gave only '10m' as a unit."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "every key, with its value, is in a run's config.yaml" in text
    assert "instead of --epochs: 90s, 10m, 1.5h (a bare number is seconds)" in text


def test_epochs_with_a_budget_from_a_config_file_says_how_to_drop_it(tmp_path, capsys, monkeypatch):
    """A budget run's config.yaml repeated with --epochs: the budget is the file's, not a flag to
    leave out, so the message says how to clear it."""
    import googlenet.train

    def no_training(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr(googlenet.train, "train", no_training)
    (tmp_path / "config.yaml").write_text("budget: 20s\n")
    assert main(["train", "--config", str(tmp_path / "config.yaml"), "--epochs", "2"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"googlenet train: error: --epochs 2 and the budget: 20s of {tmp_path / 'config.yaml'} both set how long "
        "the run is; drop the budget with --set budget= to train for the epochs"]
    monkeypatch.setattr(googlenet.train, "train", lambda config, **kwargs: (_ for _ in ()).throw(
        AssertionError(f"trains {config.epochs} epochs, budget {config.budget}")))
    with pytest.raises(AssertionError, match="trains 2 epochs, budget None"):
        main(["train", "--config", str(tmp_path / "config.yaml"), "--epochs", "2", "--set", "budget="])


def test_ctrl_c_says_interrupted_with_exit_code_130(capsys, monkeypatch):
    import googlenet.predict

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what Ctrl-C raises: no message of its own

    monkeypatch.setattr(googlenet.predict, "load_classifier", interrupted)
    assert main(["predict", "model.safetensors", "a.png"]) == 130
    assert capsys.readouterr().err.strip() == "googlenet predict: interrupted"


def test_a_mistyped_command_gets_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["trian", "--epochs", "1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "googlenet: error: unknown command 'trian'; did you mean 'train'? (commands: list-models, summary, "
        "import-torchvision, train, eval, predict, export, bench) (see `googlenet --help`)")
    with pytest.raises(SystemExit):
        main(["xyz"])
    assert "unknown command 'xyz' (commands: " in capsys.readouterr().err


@pytest.mark.parametrize("argv, line", [
    (["predict", "w.safetensors", "x.png", "--top-k", "3"],
     "googlenet predict: error: unrecognized arguments: --top-k 3; did you mean --topk? (see `googlenet predict --help`)"),
    (["eval", "w.safetensors", "--crops", "5"],
     "googlenet eval: error: argument --crops: invalid choice: 5 (choose from 1, 10, 144) (see `googlenet eval --help`)"),
])
def test_flag_mistakes_are_one_line_from_the_subcommand_with_a_suggestion(argv, line, capsys):
    """A mistyped subcommand flag was reported by the top-level parser (`usage: googlenet ...
    COMMAND`), and a bad value came under a usage block of several lines."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [line]
