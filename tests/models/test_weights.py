"""safetensors weights: bit-exact round trip, metadata rebuilds the model, clear errors."""
from __future__ import annotations

import pickle

import pytest
import torch

import googlenet
from googlenet.cli import main
from googlenet.models.weights import WeightsError


def test_round_trip_is_bit_exact(model_name, tmp_path, small_input):
    model = googlenet.create_model(model_name, num_classes=6, in_chans=1, aux_logits=False)
    path = tmp_path / "w.safetensors"
    googlenet.save_weights(model, path, class_names=list("abcdef"), input_size=28, mean=[0.5], std=[0.25])
    loaded = googlenet.load_weights(path)
    assert loaded.model_name == model_name and loaded.in_chans == 1 and loaded.num_classes == 6
    assert loaded.meta["class_names"] == list("abcdef") and loaded.meta["mean"] == [0.5]
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    x = small_input(model)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_weights_of_another_class_count_name_the_shapes(tmp_path):
    path = tmp_path / "w.safetensors"
    googlenet.save_weights(googlenet.create_model("googlenet_cifar", num_classes=10), path)
    with pytest.raises(WeightsError) as info:
        googlenet.create_model("googlenet_cifar", num_classes=5, weights=str(path))
    message = str(info.value)
    assert "fc.weight (10, 1024) vs (5, 1024)" in message and "\n" not in message


def test_weights_of_another_architecture_name_the_keys(tmp_path):
    path = tmp_path / "w.safetensors"
    googlenet.save_weights(googlenet.create_model("googlenet"), path)
    with pytest.raises(WeightsError, match="missing key.*conv1.bn"):
        googlenet.create_model("googlenet_bn", weights=str(path))


def test_not_a_weights_file(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"definitely not safetensors")
    with pytest.raises(WeightsError, match="not a safetensors weights file"):
        googlenet.load_weights(junk)
    with pytest.raises(WeightsError, match="not found"):
        googlenet.load_weights(tmp_path / "missing.safetensors")


class _Boom:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['BOOM_FILE'], 'w').write('ran')",))


def test_malicious_pickle_does_not_run_on_import(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "boom"
    monkeypatch.setenv("BOOM_FILE", str(marker))
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"fc.weight": _Boom()}))
    assert main(["import-torchvision", str(evil), str(tmp_path / "out.safetensors")]) == 2
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "weights_only=True" in err and err.count("\n") == 1


def test_saved_files_have_the_usual_permissions(tmp_path):
    import os
    import stat

    path = tmp_path / "w.safetensors"
    googlenet.save_weights(googlenet.create_model("googlenet_cifar", aux_logits=False), path)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_a_new_head_or_no_aux_heads_round_trip(tmp_path):
    """reset_classifier / drop_aux change what a weights file must rebuild: it still loads."""
    model = googlenet.create_model("googlenet_cifar", num_classes=10)
    model.reset_classifier(5)
    googlenet.save_weights(model, tmp_path / "five.safetensors")
    assert googlenet.load_weights(tmp_path / "five.safetensors").fc.out_features == 5
    model.drop_aux()
    googlenet.save_weights(model, tmp_path / "no_aux.safetensors")
    loaded = googlenet.load_weights(tmp_path / "no_aux.safetensors")
    assert loaded.aux1 is None and loaded.num_classes == 5


@pytest.mark.parametrize("content", [b"hello, not a checkpoint\n", b"PK\x03\x04 truncated zip"])
def test_import_of_a_non_checkpoint_says_so_in_words(tmp_path, capsys, content):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    assert main(["import-torchvision", str(path), str(tmp_path / "out.safetensors")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a" in err and "(101)" not in err, err


# ------------------------------------------------------------------ run folders and other outputs
def _finished_run(tmp_path):
    """A run folder as `googlenet train` leaves it: model.safetensors beside last.pt."""
    run = tmp_path / "run"
    run.mkdir()
    model = googlenet.create_model("googlenet_cifar", num_classes=4, aux_logits=False)
    googlenet.save_weights(model, run / "model.safetensors", class_names=list("abcd"))
    torch.save({"model": model.state_dict(), "config": {"epochs": 1}}, run / "last.pt")
    return run


def test_a_finished_run_folder_means_its_model_safetensors(tmp_path):
    run = _finished_run(tmp_path)
    loaded = googlenet.load_weights(run)
    assert loaded.num_classes == 4 and loaded.meta["class_names"] == list("abcd")
    assert googlenet.read_metadata(run)["model"] == "googlenet_cifar"


def test_a_run_folder_without_weights_says_why(tmp_path):
    run = _finished_run(tmp_path)
    (run / "model.safetensors").unlink()
    with pytest.raises(WeightsError) as info:
        googlenet.load_weights(run)
    message = str(info.value)
    assert f"{run} is a folder, not a weights file" in message and "\n" not in message
    assert f"googlenet train --resume {run}" in message and "not found" not in message
    (run / "last.pt").unlink()
    with pytest.raises(WeightsError, match="is a folder, not a weights file; expected .*model.safetensors"):
        googlenet.load_weights(run)
    (run / "config.yaml").write_text("epochs: 1\n")  # a run killed before its first checkpoint
    with pytest.raises(WeightsError, match=r"is a run that stopped before its first checkpoint: it has no weights; "
                                           r"start it again with `googlenet train --config .*config.yaml --out "):
        googlenet.load_weights(run)


def test_a_training_checkpoint_as_weights_points_to_the_runs_weights(tmp_path, capsys):
    run = _finished_run(tmp_path)
    code = main(["train", "--weights", str(run / "last.pt"), "--epochs", "1", "--out", str(tmp_path / "new")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "training checkpoint" in err and str(run / "model.safetensors") in err
    assert "import-torchvision" not in err
    (run / "model.safetensors").unlink()  # an unfinished run: resume it instead
    with pytest.raises(WeightsError, match=f"has not finished.*googlenet train --resume {run}"):
        googlenet.load_weights(run / "last.pt")


def test_a_torchvision_checkpoint_still_gets_the_import_advice(tmp_path):
    """Only checkpoints googlenet wrote are called training checkpoints."""
    model = googlenet.create_model("googlenet_tv", num_classes=3, aux_logits=False)
    torch.save(model.state_dict(), tmp_path / "tv.pth")
    with pytest.raises(WeightsError, match="import-torchvision"):
        googlenet.load_weights(tmp_path / "tv.pth")


def test_import_of_an_image_does_not_claim_pickled_objects(tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "img0.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["import-torchvision", str(image), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a file torch.save wrote" in err and "pickled" not in err, err


def test_import_of_an_empty_file_says_it_is_empty(tmp_path, capsys):
    empty = tmp_path / "googlenet.pth"
    empty.write_bytes(b"")  # e.g. a download that failed before the first byte
    assert main(["import-torchvision", str(empty), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the file is empty" in err, err
