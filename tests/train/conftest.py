"""Fixtures for training tests: tiny Fashion-MNIST-format files for training tests (idx .gz, random pixels with a class signal)."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = (0x0800 + array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fake_fashion_mnist(folder: Path, n_train: int = 64, n_test: int = 32, seed: int = 0) -> Path:
    """Images whose brightness encodes the label, so a few steps can learn something."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, (n, 28, 28)) + labels[:, None, None] * 19
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


import pytest  # noqa: E402


@pytest.fixture
def fake_fmnist():
    """fake_fmnist(folder, n_train, n_test) -> folder with Fashion-MNIST-format idx files."""
    return write_fake_fashion_mnist

