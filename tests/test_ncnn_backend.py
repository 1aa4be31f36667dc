"""googlenet.ncnn_backend: conversion through pnnx, the per-layer Winograd rule, errors.
(Exactness against the plain model is in test_fast.py, with the other backends.)"""
from __future__ import annotations

import pytest
import torch

import googlenet

pytest.importorskip("ncnn")
pnnx = pytest.importorskip("pnnx")

from googlenet.ncnn_backend import (FEATMASK_KEY, NO_WINOGRAD, NcnnEngine, _layer_fields,  # noqa: E402
                                    convert_to_ncnn, direct_small_3x3_convs)


def _small_tv() -> torch.nn.Module:
    return googlenet.create_model("googlenet_tv", aux_logits=False, num_classes=10).eval()


def test_only_3x3_convs_on_maps_under_8x8_lose_winograd(tmp_path):
    # At 64 px googlenet_tv's stage 3 runs at 8 x 8, stage 4 at 4 x 4 and stage 5 at 2 x 2:
    # the 3x3 and "5x5" (3x3 in torchvision) branches of its 7 Inceptions there go direct.
    shape = (1, 3, 64, 64)
    param, weights = convert_to_ncnn(_small_tv(), shape, tmp_path)
    assert direct_small_3x3_convs(param, weights, shape, threads=1) == 7 * 2
    convs = [f for f in map(_layer_fields, param.read_text().splitlines()[2:]) if f and f[0] == "Convolution"]
    masked = [params for _, _, params in convs if int(params.get(FEATMASK_KEY, 0)) & NO_WINOGRAD]
    assert len(masked) == 14 and all(p["1"] == "3" for p in masked)
    # Kept: conv1, conv2, conv3, stage 3's two Inceptions (merged 1x1, two 3x3, pool projection),
    # and stages 4-5's seven merged 1x1s and seven pool projections.
    assert len(convs) - len(masked) == 3 + 2 * 4 + 7 * 2


def test_engine_takes_only_the_converted_shape():
    engine = NcnnEngine(_small_tv(), input_shape=(1, 3, 64, 64), threads=1)
    assert engine(torch.rand(3, 3, 64, 64)).shape == (3, 10)
    with pytest.raises(ValueError, match="takes N x 3 x 64 x 64 inputs"):
        engine(torch.rand(1, 3, 96, 96))


def test_a_failed_conversion_says_pnnx_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(pnnx, "EXEC_PATH", "/bin/false")
    with pytest.raises(RuntimeError, match="pnnx could not convert the model to ncnn"):
        convert_to_ncnn(_small_tv(), (1, 3, 64, 64), tmp_path)
