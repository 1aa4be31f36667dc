"""googlenet.ncnn_backend: conversion through pnnx, the per-layer Winograd rule, errors.
(Exactness against the plain model is in test_fast.py, with the other backends.)"""
from __future__ import annotations

import pytest
import torch

import googlenet
from googlenet.cli import main as cli_main

pytest.importorskip("ncnn")
pnnx = pytest.importorskip("pnnx")

from googlenet import ncnn_backend  # noqa: E402
from googlenet.ncnn_backend import (FEATMASK, NO_WINOGRAD, NcnnEngine, _layer_fields,  # noqa: E402
                                    convert_to_ncnn, no_winograd_on_small_maps)


def _small_tv() -> torch.nn.Module:
    torch.manual_seed(0)
    return googlenet.create_model("googlenet_tv", aux_logits=False, num_classes=10).eval()


def test_layer_lines_parse_inputs_and_params():
    assert _layer_fields("Concat cat_0 4 1 a b c d out 0=0") == ("Concat", ["a", "b", "c", "d"], {"0": "0"})
    kind, blobs, params = _layer_fields("Convolution conv 1 1 in0 1 0=64 1=3 -23330=4,3,7,7,64 31=64")
    assert (kind, blobs) == ("Convolution", ["in0"])
    assert params == {"0": "64", "1": "3", "-23330": "4,3,7,7,64", "31": "64"}
    assert _layer_fields("7767517") is None and _layer_fields("") is None


def test_only_3x3_convs_on_maps_under_8x8_lose_winograd(tmp_path):
    # At 64 px googlenet_tv's stage 3 runs at 8 x 8, stage 4 at 4 x 4 and stage 5 at 2 x 2:
    # the 3x3 and "5x5" (3x3 in torchvision) branches of its 7 Inceptions there lose Winograd.
    shape = (1, 3, 64, 64)
    param, weights = convert_to_ncnn(_small_tv(), shape, tmp_path)
    assert no_winograd_on_small_maps(param, weights, shape, threads=1) == 7 * 2
    convs = [f for f in map(_layer_fields, param.read_text().splitlines()[2:]) if f and f[0] == "Convolution"]
    masked = [params for _, _, params in convs if int(params.get(FEATMASK, 0)) & NO_WINOGRAD]
    assert len(masked) == 14 and all(p["1"] == "3" for p in masked)
    # Kept: conv1, conv2, conv3, stage 3's two Inceptions (merged 1x1, two 3x3, pool projection),
    # and stages 4-5's seven merged 1x1s and seven pool projections.
    assert len(convs) - len(masked) == 3 + 2 * 4 + 7 * 2


def test_ncnn_honours_the_mask(monkeypatch):
    """With the rule off, the same layers run Winograd: the logits change (by rounding only)."""
    model, x = _small_tv(), torch.rand(2, 3, 64, 64)
    with_rule = NcnnEngine(model, (1, 3, 64, 64), threads=1)
    monkeypatch.setattr(ncnn_backend, "WINOGRAD_MIN_PIXELS", 0)
    all_winograd = NcnnEngine(model, (1, 3, 64, 64), threads=1)
    assert (with_rule.without_winograd, all_winograd.without_winograd) == (14, 0)
    a, b = with_rule(x), all_winograd(x)
    assert not torch.equal(a, b) and torch.allclose(a, b, rtol=0, atol=1e-4 * b.abs().max().item())


def test_engine_takes_only_the_converted_shape():
    engine = NcnnEngine(_small_tv(), input_shape=(1, 3, 64, 64), threads=1)
    assert engine(torch.rand(3, 3, 64, 64)).shape == (3, 10)
    assert engine(torch.rand(0, 3, 64, 64)).shape == (0, 10)  # an empty batch, as the torch model
    with pytest.raises(ValueError, match="takes N x 3 x 64 x 64 inputs"):
        engine(torch.rand(1, 3, 96, 96))


@pytest.mark.parametrize("executable, says", [
    ("/bin/false", "pnnx could not convert the model to ncnn (exit code 1)"),
    ("/nonexistent/pnnx", "pnnx could not start"),
])
def test_a_failed_conversion_says_pnnx_failed(tmp_path, monkeypatch, executable, says):
    monkeypatch.setattr(pnnx, "EXEC_PATH", executable)
    with pytest.raises(RuntimeError) as info:
        convert_to_ncnn(_small_tv(), (1, 3, 64, 64), tmp_path)
    assert str(info.value).startswith(says) and not str(info.value).endswith(": ")


def test_predict_says_in_one_line_when_ncnn_cannot_take_the_model(tmp_path, monkeypatch, capsys):
    from PIL import Image

    weights = googlenet.save_weights(_small_tv(), tmp_path / "tv.safetensors", input_size=64, resize=64)
    image = tmp_path / "a.png"
    Image.new("RGB", (80, 70), "red").save(image)
    monkeypatch.setattr(pnnx, "EXEC_PATH", "/bin/false")
    assert cli_main(["predict", str(weights), str(image), "--backend", "ncnn"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pnnx could not convert" in err and "--backend torch" in err, err
