"""Datasets: real Fashion-MNIST (Debian files, small limits), fake CIFAR archives and image folders."""
from __future__ import annotations

import gzip
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from googlenet.data import datasets
from googlenet.data.datasets import load_dataset
from googlenet.errors import UserError

FMNIST = Path(datasets.FASHION_MNIST_SYSTEM_DIR)
needs_fmnist = pytest.mark.skipif(not (FMNIST / "t10k-images-idx3-ubyte.gz").is_file(),
                                  reason="dataset-fashion-mnist is not installed")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GOOGLENET_CACHE", str(tmp_path / "cache"))


def _no_download(root):
    raise OSError("no network in tests")


# ------------------------------------------------------------------ Fashion-MNIST
@needs_fmnist
def test_fashion_mnist_test_split_limit_and_cache(tmp_path):
    first = load_dataset("fashion-mnist", "test", limit=50)
    assert first.images.shape == (50, 1, 28, 28) and first.images.dtype == torch.uint8
    assert first.labels.dtype == torch.int64 and int(first.labels.max()) < 10
    assert first.class_names[0] == "T-shirt/top" and len(first.class_names) == 10
    assert first.mean == (0.2860,) and first.std == (0.3530,)
    cached = list((tmp_path / "cache" / "datasets").glob("fashion-mnist-test-*.safetensors"))
    assert len(cached) == 1
    again = load_dataset("fashion-mnist", "test", limit=50)  # from the cache now
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert len(load_dataset("fashion-mnist", "test")) == 10_000


def test_the_cache_keeps_a_few_entries_per_split_not_one_per_copy_ever_read(tmp_path):
    """Each copy of a dataset (another folder, a re-download) is its own entry; old ones are pruned."""
    for copy in range(datasets.CACHE_ENTRIES_PER_SPLIT + 2):
        _fake_fmnist(tmp_path / f"copy{copy}")
        load_dataset("fashion-mnist", "test", data_dir=tmp_path / f"copy{copy}")
    cached = list((tmp_path / "cache" / "datasets").glob("fashion-mnist-test-*.safetensors"))
    assert len(cached) == datasets.CACHE_ENTRIES_PER_SPLIT
    newest = tmp_path / f"copy{datasets.CACHE_ENTRIES_PER_SPLIT + 1}"
    assert len(load_dataset("fashion-mnist", "test", data_dir=newest)) == 6  # still cached and readable


def _write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    dims = array.shape
    header = (magic if magic is not None else 0x0800 + len(dims)).to_bytes(4, "big")
    header += b"".join(d.to_bytes(4, "big") for d in dims)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_fmnist(folder: Path, n: int = 6) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def test_fashion_mnist_from_data_dir(tmp_path):
    _fake_fmnist(tmp_path / "fm")
    data = load_dataset("fashion-mnist", "train", data_dir=tmp_path / "fm")
    assert data.images.shape == (6, 1, 28, 28)
    assert data.labels.tolist() == [0, 1, 2, 3, 4, 5]


def test_wrong_idx_magic_names_the_file(tmp_path):
    _fake_fmnist(tmp_path / "fm")
    bad = tmp_path / "fm" / "train-images-idx3-ubyte.gz"
    _write_idx(bad, np.zeros((6, 28, 28)), magic=0x0801)
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz.*magic"):
        load_dataset("fashion-mnist", "train", data_dir=tmp_path / "fm")


def test_wrong_idx_size_names_the_file(tmp_path):
    _fake_fmnist(tmp_path / "fm")
    bad = tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write((0x0801).to_bytes(4, "big") + (6).to_bytes(4, "big") + bytes(3))
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz.*3 bytes"):
        load_dataset("fashion-mnist", "test", data_dir=tmp_path / "fm")


def test_missing_fashion_mnist_names_all_three_routes(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(datasets, "download_fashion_mnist", _no_download)
    with pytest.raises(UserError) as info:
        load_dataset("fashion-mnist", "train")
    message = str(info.value)
    assert "--data DIR" in message and "dataset-fashion-mnist" in message and "internet" in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10"])
def test_a_data_folder_that_does_not_exist_is_named_as_such(tmp_path, name):
    with pytest.raises(UserError) as info:
        load_dataset(name, "train", data_dir=tmp_path / "typo")
    message = str(info.value)
    assert f"--data {tmp_path / 'typo'}: no such folder" in message and "\n" not in message


def test_a_fashion_mnist_data_path_that_is_a_file_is_named_as_such(tmp_path):
    """`--data .../train-images-idx3-ubyte.gz` was told 'no such folder' about a file that exists."""
    one = tmp_path / "train-images-idx3-ubyte.gz"
    one.write_bytes(b"")
    with pytest.raises(UserError) as info:
        load_dataset("fashion-mnist", "train", data_dir=one)
    assert str(info.value) == (f"--data {one} is a file; pass the folder holding the four Fashion-MNIST idx files "
                               f"(e.g. --data {tmp_path})")


def test_unknown_dataset_suggests():
    with pytest.raises(UserError, match="cifar10"):
        load_dataset("cifar-10", "train")


# ------------------------------------------------------------------ CIFAR
def _cifar_batch(n: int, seed: int, labels_key: str = "labels") -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"fake", labels_key.encode(): list(map(int, rng.integers(0, 10, n))),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"x.png"] * n}


def make_fake_cifar10(root: Path, n: int = 4) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(_cifar_batch(n, i), protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(_cifar_batch(n, 9), protocol=2))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=2))
    return folder


def test_cifar10_folder_and_tarball(tmp_path):
    folder = make_fake_cifar10(tmp_path / "dir")
    train = load_dataset("cifar10", "train", data_dir=tmp_path / "dir")
    assert train.images.shape == (20, 3, 32, 32) and train.class_names[1] == "automobile"
    expected = _cifar_batch(4, 1)[b"data"].reshape(4, 3, 32, 32)
    assert torch.equal(train.images[:4], torch.from_numpy(expected))
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    os.makedirs(tmp_path / "tar")
    os.replace(tmp_path / "cifar-10-python.tar.gz", tmp_path / "tar" / "cifar-10-python.tar.gz")
    test = load_dataset("cifar10", "test", data_dir=tmp_path / "tar", limit=3)
    assert test.images.shape == (3, 3, 32, 32)
    assert test.labels.tolist() == _cifar_batch(4, 9)[b"labels"][:3]


def test_cifar100(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(pickle.dumps(_cifar_batch(5, 1, "fine_labels"), protocol=4))
    (folder / "test").write_bytes(pickle.dumps(_cifar_batch(2, 2, "fine_labels"), protocol=4))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    data = load_dataset("cifar100", "train", data_dir=tmp_path)
    assert len(data) == 5 and data.num_classes == 100 and data.mean[0] == pytest.approx(0.5071)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_cifar_pickle_is_refused(tmp_path, monkeypatch):
    folder = make_fake_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil()}, protocol=2))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="data_batch_3.*refusing to load global"):
        load_dataset("cifar10", "train", data_dir=tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_missing_cifar_says_where_to_get_it(tmp_path):
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        load_dataset("cifar10", "train", data_dir=tmp_path)


def test_a_partly_extracted_cifar_folder_names_the_missing_batch(tmp_path):
    folder = make_fake_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(UserError, match="data_batch_3 is missing; re-extract"):
        load_dataset("cifar10", "train", data_dir=tmp_path)


def test_a_truncated_cifar_tarball_is_one_line_not_a_traceback(tmp_path):
    folder = make_fake_cifar10(tmp_path / "dir")
    tarball = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    data = tarball.read_bytes()
    tarball.write_bytes(data[: len(data) * 2 // 3])  # a download cut off: still starts like a tar
    assert tarfile.is_tarfile(tarball)
    with pytest.raises(UserError, match="damaged or truncated.*download it again"):
        load_dataset("cifar10", "train", data_dir=tmp_path)


# ------------------------------------------------------------------ ImageFolder
def make_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 2, size: int = 40) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def test_image_folder(tmp_path):
    root = make_image_folder(tmp_path / "imgs")
    train = datasets.image_folder(root, "train")
    assert train.class_names == ["cat", "dog"] and len(train) == 4
    image, label = train[3]
    assert image.size == (48, 40) and label == 1
    assert len(datasets.image_folder(root, "val")) == 4
    with pytest.raises(UserError, match="train/.*does not exist"):
        datasets.image_folder(tmp_path / "empty", "train")
    (tmp_path / "only_train" / "train").mkdir(parents=True)
    with pytest.raises(UserError) as info:  # eval reads test/ or val/: the message names both
        datasets.image_folder(tmp_path / "only_train", "test")
    assert "has no test/ or val/ folder" in str(info.value) and "does not exist" not in str(info.value)


def test_a_split_given_as_the_data_folder_names_its_parent(tmp_path):
    root = make_image_folder(tmp_path / "imgs")
    with pytest.raises(UserError, match=rf"looks like a split itself: pass its parent, --data {root};"):
        datasets.image_folder(root / "val", "val")


def test_an_image_folder_of_empty_class_folders_is_a_short_line(tmp_path):
    """torchvision lists every class folder without images (a line of kilobytes for an empty
    ImageNet tree); the error keeps the count and the first three names."""
    from googlenet.data.datasets import image_folder

    for i in range(40):
        (tmp_path / "val" / f"n{i:08d}").mkdir(parents=True)
    (tmp_path / "val" / "n00000000" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError) as caught:
        image_folder(tmp_path, "val")
    message = str(caught.value)
    assert "40 class folder(s) hold no image file (n00000000, n00000001, n00000002 and 37 more)" in message
    assert ".jpg" in message and "n00000039" not in message and len(message) < 300
