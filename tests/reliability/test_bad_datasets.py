"""Broken datasets end in one line that names the file or folder and says how to fix it."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

import googlenet
from googlenet.cli import main

from .conftest import write_fashion_mnist, write_idx

TRAIN = ["--limit-train", "16", "--limit-test", "8", "--epochs", "1", "--batch-size", "8", "--input-size", "8",
         "--device", "cpu"]


def _one_line_error(capsys, code: int, expected_code: int = 2) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == expected_code and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _folder(root, classes=("a", "b"), splits=("train", "val"), empty=()):
    from PIL import Image

    for split in splits:
        for name in classes:
            (root / split / name).mkdir(parents=True)
            if name not in empty:
                Image.new("RGB", (10, 10), (40, 80, 120)).save(root / split / name / "x.png")
    return root


def _train_folder(root, tmp_path):
    return main(["train", "--dataset", "imagefolder", "--data", str(root), "--workers", "0", "--model",
                 "googlenet_cifar", *TRAIN, "--out", str(tmp_path / "run")])


@pytest.mark.parametrize("case, needle", [
    ("no-val", "val/"),
    ("empty-class", "1 class folder(s) hold no image file (b); add images to them or remove them (image files end in .jpg"),
    ("only-text-files", "1 class folder(s) hold no image file (a); add images to them or remove them (image files end in .jpg"),
    ("different-classes", "train/ and val/ have different class folders (only in train/: b; only in val/: c); "
                          "give every class a folder in both"),
    ("one-class", "train/ has one class folder (a); a classifier needs two or more, one folder of images per class"),
    ("missing-root", "has no train/"),
])
def test_broken_image_folders(case, needle, tmp_path, capsys):
    root = tmp_path / "imgs"
    if case == "no-val":
        _folder(root, splits=("train",))
    elif case == "empty-class":
        _folder(root, empty=("b",))
    elif case == "only-text-files":
        _folder(root, empty=("a",))
        for split in ("train", "val"):
            (root / split / "a" / "notes.txt").write_text("not an image")
    elif case == "different-classes":
        _folder(root / "x", splits=("train",), classes=("a", "b"))
        _folder(root / "y", splits=("val",), classes=("a", "c"))
        (root / "x" / "train").rename(root / "train")
        (root / "y" / "val").rename(root / "val")
    elif case == "one-class":  # trained to 100% on its one class and learnt nothing
        _folder(root, classes=("a",))
    line = _one_line_error(capsys, _train_folder(root, tmp_path))
    assert str(root) in line and needle in line, line


def test_eval_with_weights_of_another_class_count(tmp_path, fmnist, capsys):
    model = googlenet.create_model("googlenet_cifar", num_classes=3, in_chans=1)
    googlenet.save_weights(model, tmp_path / "w.safetensors", class_names=["a", "b", "c"], input_size=8,
                           resize=8, mean=[0.5], std=[0.25], dataset="fashion-mnist")
    line = _one_line_error(capsys, main(["eval", str(tmp_path / "w.safetensors"), "--data", str(fmnist),
                                         "--limit-test", "8", "--device", "cpu"]))
    assert "10 classes" in line and "predicts 3" in line and "w.safetensors" in line, line


def test_image_folder_with_more_classes_than_the_weights(tmp_path, capsys):
    root = _folder(tmp_path / "imgs", classes=("a", "b", "c"))
    model = googlenet.create_model("googlenet_cifar", num_classes=2)
    googlenet.save_weights(model, tmp_path / "w.safetensors", class_names=["a", "b"], input_size=8, resize=8,
                           mean=[0.5] * 3, std=[0.25] * 3, dataset="imagefolder")
    line = _one_line_error(capsys, main(["eval", str(tmp_path / "w.safetensors"), "--dataset", "imagefolder",
                                         "--data", str(root), "--device", "cpu"]))
    assert "has 3 classes and 1 of them (c) match none of the 2 classes of" in line, line


@pytest.mark.parametrize("damage, needle", [
    ("magic", "not an idx3-ubyte file"),
    ("truncated-header", "truncated idx header"),
    ("short-data", "idx header says"),
    ("not-gzip", "cannot read"),
    ("count-mismatch", "labels"),
])
def test_broken_idx_files_name_the_file(damage, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GOOGLENET_CACHE", str(tmp_path / "cache"))
    data = write_fashion_mnist(tmp_path / "fm")
    images = data / "train-images-idx3-ubyte.gz"
    bad = images
    if damage == "magic":
        write_idx(images, np.zeros((32, 28, 28)), magic=0x0801)
    elif damage == "truncated-header":
        images.write_bytes(gzip.compress(b"\x00\x00\x08\x03\x00\x00"))
    elif damage == "short-data":
        images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-100]))
    elif damage == "not-gzip":
        images.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    elif damage == "count-mismatch":
        bad = data / "train-labels-idx1-ubyte.gz"
        write_idx(bad, np.arange(31) % 10)
    line = _one_line_error(capsys, main(["train", "--data", str(data), *TRAIN, "--out", str(tmp_path / "run")]))
    assert bad.name in line and needle in line, line
