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


@pytest.fixture(autouse=True, scope="session")
def _private_dataset_cache(tmp_path_factory):
    """Decoded datasets go to a folder of this session, never the user's ~/.cache/googlenet
    (the fake datasets of each run would add entries there; subprocesses inherit it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GOOGLENET_CACHE", str(tmp_path_factory.mktemp("googlenet-cache")))
        yield


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """A fixed seed, and one intra-op thread: the tests' tiny convolutions run fastest so
    on a 2-core machine (a second thread mostly spins)."""
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _MarkerPayload:
    """Unpickling this by plain pickle creates the marker file: proof that code would run."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def malicious_pickle(tmp_path):
    """(payload bytes, marker path): a live pickle exploit, checked live, marker removed."""
    import pickle

    marker = tmp_path / "pwned"
    payload = pickle.dumps(_MarkerPayload(marker))
    pickle.loads(payload)
    assert marker.exists()
    marker.unlink()
    return payload, marker


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
