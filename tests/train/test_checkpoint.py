"""load_checkpoint's errors say what the file is: not a checkpoint at all, or one holding refused objects."""
from __future__ import annotations

import collections

import pytest
import torch
from PIL import Image

from googlenet.cli import main
from googlenet.errors import UserError
from googlenet.train.checkpoint import load_checkpoint


class _Planted:
    """An object torch's weights-only unpickler must refuse (its class is no allowed global)."""


def test_an_image_is_not_a_checkpoint_and_holds_no_pickle(tmp_path):
    image = tmp_path / "img0.png"
    Image.new("RGB", (8, 8)).save(image)
    with pytest.raises(UserError) as info:
        load_checkpoint(image)
    message = str(info.value)
    assert f"{image} is not a training checkpoint (not a file torch.save wrote)" in message
    assert "pickled" not in message and "\n" not in message


@pytest.mark.parametrize("content, says", [
    (b"hello, not a checkpoint\n", "not a file torch.save wrote"),
    (b"", "the file is empty"),
    (b"\x80\x04\x95 a damaged protocol-4 pickle", "a pickle torch cannot read as plain data"),
])
def test_other_files_torch_save_never_writes(tmp_path, content, says, recwarn):
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=says) as info:
        load_checkpoint(tmp_path)
    assert "pickled" not in str(info.value)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]  # no second stderr line


def test_refused_objects_are_still_called_pickled_objects(tmp_path):
    torch.save({"model": {}, "config": {}, "extra": _Planted()}, tmp_path / "last.pt")
    with pytest.raises(UserError, match="pickled Python objects"):
        load_checkpoint(tmp_path)


def test_a_truncated_checkpoint_is_called_so(tmp_path):
    torch.save({"model": collections.OrderedDict(w=torch.zeros(64)), "config": {}}, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated") as info:
        load_checkpoint(tmp_path)
    assert "pickled" not in str(info.value) and "not a file torch.save wrote" not in str(info.value)


def test_resume_from_an_image_is_one_line(tmp_path, capsys):
    image = tmp_path / "img0.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["train", "--resume", str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a training checkpoint" in err and "pickled" not in err, err
