"""Fixtures for the reliability tests: tiny Fashion-MNIST-format data, a small PNG, one thread."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
    """An idx file (gzip) as Fashion-MNIST ships them; `magic` forges the header's magic number."""
    magic = 0x0800 + array.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())
    return path


def write_fashion_mnist(folder: Path, n_train: int = 32, n_test: int = 16) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, (n, 28, 28)) + labels[:, None, None] * 19  # brightness encodes the class
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture
def fmnist(tmp_path, monkeypatch) -> Path:
    """A tiny Fashion-MNIST folder (32 train / 16 test images) and a private decode cache."""
    monkeypatch.setenv("GOOGLENET_CACHE", str(tmp_path / "cache"))
    return write_fashion_mnist(tmp_path / "fm")

