"""googlenet_tv is torchvision's googlenet: same keys, same outputs, same aux heads;
and torchvision's published weights load through import-torchvision or its weights API."""
from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

import googlenet
from googlenet.cli import main
from googlenet.models import weights as weights_module


def _tv(**kw) -> torch.nn.Module:
    return torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True, **kw)


@pytest.mark.parametrize("transform_input", [False, True])
def test_same_keys_shapes_and_eval_logits(transform_input):
    tv = _tv(transform_input=transform_input).eval()
    ours = googlenet.create_model("googlenet_tv", transform_input=transform_input).eval()
    theirs = {k: v.shape for k, v in tv.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == theirs
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(ours(x), tv(x), atol=1e-5, rtol=0)


def test_train_mode_aux_heads_match_by_name():
    # torchvision returns (logits, aux_logits2, aux_logits1); ours (logits, aux1, aux2).
    tv = _tv(dropout=0.0, dropout_aux=0.0).train()
    ours = googlenet.create_model("googlenet_tv", dropout=0.0, dropout_aux=0.0).train()
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(2, 3, 96, 96)
    theirs, mine = tv(x), ours(x)
    assert torch.allclose(mine.logits, theirs.logits, atol=1e-5)
    assert torch.allclose(mine.aux1, theirs.aux_logits1, atol=1e-5)
    assert torch.allclose(mine.aux2, theirs.aux_logits2, atol=1e-5)


def test_import_torchvision_cli_round_trip(tmp_path, capsys):
    tv = _tv(transform_input=True).eval()
    pth, out = tmp_path / "googlenet.pth", tmp_path / "tv.safetensors"
    torch.save(tv.state_dict(), pth)
    assert main(["import-torchvision", str(pth), str(out)]) == 0
    assert "1000 classes" in capsys.readouterr().out
    model = googlenet.load_weights(out).eval()
    assert model.transform_input and model.meta["input_size"] == 224
    assert len(model.meta["class_names"]) == 1000 and model.meta["class_names"][0] == "tench"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), tv(x), atol=1e-5, rtol=0)


def test_import_of_a_wrong_architecture_is_one_line(tmp_path, capsys):
    pth = tmp_path / "resnet.pth"
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["fc.weight"] = state["fc.weight"][:10]
    torch.save(state, pth)
    assert main(["import-torchvision", str(pth), str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not fit googlenet_tv" in err and "missing key" in err
    assert "Traceback" not in err


def test_imagenet_weights_offline_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(googlenet.UserError) as info:
        googlenet.create_model("googlenet_tv", weights="imagenet")
    message = str(info.value)
    assert "\n" not in message and "import-torchvision" in message
    assert weights_module.IMAGENET_FILE in message


def test_imagenet_weights_from_a_prefilled_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    tv = _tv(transform_input=True).eval()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(tv.state_dict(), cache / weights_module.IMAGENET_FILE)
    model = googlenet.create_model("googlenet_tv", weights="imagenet").eval()
    assert model.aux1 is None and model.transform_input
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), tv(x), atol=1e-5, rtol=0)


def test_imagenet_weights_only_for_tv():
    with pytest.raises(googlenet.UserError, match="googlenet_tv only"):
        googlenet.create_model("googlenet", weights="imagenet")
