"""Every entry point that reads a file refuses a malicious pickle without running it.

The payload's __reduce__ creates a marker file when unpickled by plain pickle (checked
first, so the test can fail); each command must end with a one-line error and exit code 2
while the marker never appears.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import googlenet
from googlenet.cli import main


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))  # any callable would do; this one leaves a visible trace


def plant(path: Path, marker: Path, form: str) -> Path:
    """Write the exploit as a raw pickle or inside a torch.save zip archive."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"state_dict": Exploit(marker)}
    if form == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    return path


def _tiny_png(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(path)
    return path


def _entry_points(tmp: Path, fm: Path, evil: Path) -> dict[str, list[str]]:
    run = tmp / "run"
    tiny = ["--data", str(fm), "--limit-train", "16", "--limit-test", "8", "--epochs", "1", "--batch-size", "8",
            "--input-size", "8", "--device", "cpu"]
    return {
        "import-torchvision": ["import-torchvision", str(evil), str(tmp / "out.safetensors")],
        "eval": ["eval", str(evil), "--data", str(fm), "--limit-test", "8", "--device", "cpu"],
        "predict": ["predict", str(evil), str(_tiny_png(tmp / "x.png")), "--device", "cpu"],
        "export": ["export", str(evil), "--format", "onnx", "--out", str(tmp / "x.onnx")],
        "export-torchscript": ["export", str(evil), "--format", "torchscript", "--out", str(tmp / "x.pt")],
        "train --weights": ["train", "--weights", str(evil), *tiny, "--out", str(run)],
        "train --resume": ["train", "--resume", str(evil.parent)],
    }


ENTRY_POINTS = ["import-torchvision", "eval", "predict", "export", "export-torchscript", "train --weights",
                "train --resume"]


@pytest.mark.parametrize("form", ["pickle", "torch-zip"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_malicious_pickle_runs_no_code(entry, form, tmp_path, fmnist, capsys):
    marker = tmp_path / "pwned"
    name = "last.pt" if entry == "train --resume" else ("weights.safetensors" if entry == "eval" else "evil.pth")
    evil = plant(tmp_path / "evil" / name, marker, form)
    if form == "pickle":  # the payload is live: plain pickle runs it
        pickle.loads(evil.read_bytes())
        assert marker.exists()
        marker.rmdir()
    argv = _entry_points(tmp_path, fmnist, evil)[entry]
    code = main(argv)
    err = capsys.readouterr().err
    assert not marker.exists(), f"{entry} ran code from a pickle"
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(evil) in lines[0] or str(evil.parent) in lines[0], lines[0]
    assert "False" not in lines[0], f"the error must not suggest weights_only=False: {lines[0]}"


def test_malicious_cifar_batch_through_train(tmp_path, capsys, monkeypatch):
    """A CIFAR archive is a pickle too: the restricted unpickler refuses it (the data tests
    check load_dataset; this goes through the command line)."""
    monkeypatch.setenv("GOOGLENET_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "pwned"
    folder = tmp_path / "c10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for member in ["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]:
        (folder / member).write_bytes(pickle.dumps(Exploit(marker), protocol=2))
    code = main(["train", "--dataset", "cifar10", "--data", str(tmp_path / "c10"), "--epochs", "1",
                 "--device", "cpu", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert not marker.exists()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "data_batch_1" in err, err


def test_good_files_still_load(tmp_path):
    """The same entry points accept the real thing (so the refusals above are not blanket)."""
    model = googlenet.create_model("googlenet_tv", num_classes=3, aux_logits=False)
    torch.save(model.state_dict(), tmp_path / "tv.pth")
    assert main(["import-torchvision", str(tmp_path / "tv.pth"), str(tmp_path / "ok.safetensors")]) == 0
    assert googlenet.load_weights(tmp_path / "ok.safetensors").fc.out_features == 3
