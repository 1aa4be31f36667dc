"""Shared fixtures: tiny inputs so the suite runs in minutes on a 2-core CPU."""
from __future__ import annotations

import pytest
import torch

import googlenet

ALL_MODELS = googlenet.list_models()


def _native_input(model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    """Random non-zero input at the model's native size."""
    size = model.variant.input_size
    return torch.rand(batch, model.in_chans, size, size) + 0.1


@pytest.fixture
def native_input():
    """native_input(model, batch=2): random non-zero input at the model's native size."""
    return _native_input


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(params=ALL_MODELS)
def model_name(request) -> str:
    return request.param


@pytest.fixture
def small_input():
    """small_input(model, batch=2): a reduced-size input (96 px; 16 px for the small-image
    variant) for tests that check plumbing rather than the native-size shapes."""

    def make(model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
        size = 16 if model.variant.stem == "cifar" else 96
        return torch.rand(batch, model.in_chans, size, size) + 0.1

    return make
