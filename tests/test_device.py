"""--device: what is accepted, and one clear line for everything else."""
from __future__ import annotations

import pytest
import torch

from googlenet.cli import main
from googlenet.device import resolve_device
from googlenet.errors import UserError


@pytest.mark.parametrize("name", ["cpu", "CPU", " cpu ", "cpu:0"])
def test_cpu_spellings(name):
    assert resolve_device(name) == torch.device("cpu")


def test_auto_picks_what_is_there():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("name, says", [
    ("tpu", "unknown device 'tpu'"),
    ("mps", "--device mps is not supported: googlenet runs on cpu or cuda"),
    ("xpu", "--device xpu is not supported"),
    ("meta", "--device meta is not supported"),
    ("cpu:1", "there is one cpu device"),
])
def test_devices_the_project_does_not_run_on_are_one_line(name, says):
    with pytest.raises(UserError, match=says.replace("(", r"\(")):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_cuda_without_a_gpu():
    with pytest.raises(UserError, match="no CUDA GPU is available"):
        resolve_device("cuda:0")
    with pytest.raises(UserError, match=r"^--device cuda:1 was asked for"):  # the device asked for, as typed
        resolve_device("cuda:1")


@pytest.mark.parametrize("command", [["bench", "--quick"], ["train", "--data", "nowhere"]])
def test_the_commands_say_it_in_one_line(command, capsys):
    assert main([*command, "--device", "mps"]) == 2
    err = capsys.readouterr().err.strip()
    assert "mps is not supported" in err and "\n" not in err and "Traceback" not in err
