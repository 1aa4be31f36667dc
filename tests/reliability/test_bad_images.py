"""Hostile image files in an ImageFolder training/validation tree: each is reported once by
name and replaced by a readable image, the batches stay full, nothing hangs or crashes.

(The predict path's own tests are in tests/test_predict.py: every image mode, bombs,
truncation, FIFOs, fuzzing. Here: the DataLoader path training and in-training evaluation use.)
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from googlenet.data import transforms as T
from googlenet.data.datasets import STATS, image_folder
from googlenet.data.folder_loader import FolderLoader

SIZE = 8  # pixels fed to the network


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _rgb(seed: int = 0, size=(20, 16)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _png_with_declared_size(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but whose data is a few bytes: a bomb's header."""
    small = _encode(Image.new("L", (4, 4)), "PNG")
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    patched = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return small[:8] + patched + small[8 + len(patched):]


def _animated_gif() -> bytes:
    frames = [Image.new("P", (12, 12), color=i * 40) for i in range(3)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


GOOD_PNG = _encode(_rgb(), "PNG")
GOOD_JPEG = _encode(_rgb(1), "JPEG")

# name -> (bytes or None for a FIFO, readable?)
CASES = {
    "truncated.jpg": (GOOD_JPEG[: len(GOOD_JPEG) // 2], False),
    "truncated.png": (GOOD_PNG[: len(GOOD_PNG) // 2], False),
    "corrupt.png": (GOOD_PNG[:40] + bytes(len(GOOD_PNG) - 40), False),
    "empty.jpg": (b"", False),
    "text.jpg": (b"this is not an image\n" * 20, False),
    "bomb.png": (_png_with_declared_size(40_000, 40_000), False),
    "bomb_below_pillow_error.png": (_png_with_declared_size(10_000, 10_000), False),  # Pillow only warns
    "fifo.png": (None, False),
    "sixteen_bit.png": (_encode(Image.fromarray(np.full((10, 10), 60000, np.uint16)), "PNG"), True),
    "cmyk.jpg": (_encode(_rgb(2).convert("CMYK"), "JPEG"), True),
    "palette.png": (_encode(_rgb(3).convert("P"), "PNG"), True),
    # ImageFolder lists only torchvision's extensions (no .gif): GIF content under a .png name
    "animated_gif.png": (_animated_gif(), True),
    "grey_alpha.png": (_encode(_rgb(4).convert("LA"), "PNG"), True),
}


def _tree(root: Path, hostile: dict[str, bytes | None], per_class: int = 3) -> Path:
    """root/train/{a,b}/ with good PNGs and the hostile files in train/a/; root/val/ likewise."""
    for split in ("train", "val"):
        for k, name in enumerate(("a", "b")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                _rgb(10 * k + i).save(folder / f"good{i}.png")
    for split in ("train", "val"):
        for name, data in hostile.items():
            path = root / split / "a" / name
            if data is None:
                os.mkfifo(path)  # opening it for reading would block forever
            else:
                path.write_bytes(data)
    return root


def _loader(root: Path, split: str, batch: int) -> FolderLoader:
    mean, std = STATS["imagefolder"]
    return FolderLoader(image_folder(root, split), batch, "cpu", workers=0, channels_last=False,
                        train_transform=T.finetune_train_transform(SIZE, mean, std),
                        eval_transform=T.eval_transform(SIZE, SIZE, mean, std))


def _all_batches(loader: FolderLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader.train_batches(0, loader.steps_per_epoch, 0)) + list(loader.eval_batches())


def test_hostile_files_are_reported_once_and_replaced(tmp_path, capfd):
    root = _tree(tmp_path / "imgs", {name: data for name, (data, _) in CASES.items()})
    total = 6 + len(CASES)
    assert len(image_folder(root, "train")) == total
    for split in ("train", "val"):
        loader = _loader(root, split, batch=total)  # one batch holding every file
        batches = _all_batches(loader)
        for x, y in batches:
            assert x.shape == (total, 3, SIZE, SIZE) and torch.isfinite(x).all()
    err = capfd.readouterr().err
    for name, (_, readable) in CASES.items():
        mentions = [line for line in err.splitlines() if f"{os.sep}{name}:" in line]
        if readable:
            assert not mentions, f"{name} should decode: {mentions}"
        else:
            # one line per file and split (each split is its own dataset), naming it and the reason
            assert len(mentions) == 2, (name, err)
            assert all(line.startswith("warning: skipping unreadable image") for line in mentions)
    assert "decompression bomb" in err and "Traceback" not in err


def test_every_file_unreadable_is_one_clear_error(tmp_path):
    from googlenet.errors import RunError

    root = tmp_path / "imgs"
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            (root / split / name / "x.jpg").write_bytes(b"junk")
    with pytest.raises(RunError, match="none of the 2 images"):
        _all_batches(_loader(root, "train", batch=2))


def test_read_readable_skips_bad_files_and_fails_only_when_none_decode(tmp_path):
    """The reader eval and int8 calibration share: good files keep their index, bad ones are
    listed with their reason, and an all-bad list is one UserError naming the first file."""
    from googlenet.errors import UserError
    from googlenet.images import read_readable

    (tmp_path / "good.png").write_bytes(GOOD_PNG)
    (tmp_path / "bad.png").write_bytes(GOOD_PNG[:40])
    skipped: list[str] = []
    got = list(read_readable([tmp_path / "bad.png", tmp_path / "good.png"], 1, skipped, "here"))
    assert [index for index, _ in got] == [1] and got[0][1].shape == (1, 16, 20)
    assert len(skipped) == 1 and "bad.png" in skipped[0]
    with pytest.raises(UserError, match=r"none of the 2 image\(s\) in here could be read; the first: .*bad\.png"):
        list(read_readable([tmp_path / "bad.png", tmp_path / "bad.png"], 3, [], "here"))
    assert list(read_readable([], 3, [], "here")) == []


def test_a_training_run_survives_a_truncated_image(tmp_path, capsys):
    """The whole command: a run over a folder with a truncated JPEG finishes and says which file."""
    from googlenet.cli import main

    root = _tree(tmp_path / "imgs", {"truncated.jpg": CASES["truncated.jpg"][0]}, per_class=2)
    code = main(["train", "--dataset", "imagefolder", "--data", str(root), "--model", "googlenet_cifar",
                 "--input-size", str(SIZE), "--epochs", "1", "--batch-size", "6", "--workers", "0",
                 "--device", "cpu", "--set", "aux_logits=false", "--set", "ema=false",
                 "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "truncated.jpg" in captured.err and (tmp_path / "run" / "model.safetensors").is_file()


BASES = {"png": GOOD_PNG, "jpeg": GOOD_JPEG, "gif": _animated_gif(),
         "palette": CASES["palette.png"][0], "sixteen": CASES["sixteen_bit.png"][0]}


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(base=st.sampled_from(sorted(BASES)), cut=st.floats(0.0, 1.0),
       flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=6),
       junk=st.binary(max_size=64))
def test_fuzzed_files_decode_or_are_skipped(tmp_path_factory, base, cut, flips, junk):
    data = bytearray(BASES[base])
    for where, value in flips:
        data[min(int(where * len(data)), len(data) - 1)] = value
    data = bytes(data[: max(0, int(cut * len(data)))] if cut < 0.9 else data) + junk
    root = _tree(tmp_path_factory.mktemp("fuzz"), {"fuzzed.img.png": data}, per_class=1)
    loader = _loader(root, "train", batch=3)
    (x, y), = loader.train_batches(0, 1, 0)  # the fuzzed file decodes or is replaced; nothing else happens
    assert x.shape == (3, 3, SIZE, SIZE) and torch.isfinite(x).all()
