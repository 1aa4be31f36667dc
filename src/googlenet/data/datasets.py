"""Datasets: Fashion-MNIST, CIFAR-10/100 (decoded once to uint8 tensors) and ImageFolder trees.

Small datasets come back as an `ArrayDataset`: all images as one uint8 N x C x H x W
tensor plus int64 labels, so training never re-decodes an image (and a GPU can hold
the whole set). The decoded tensors are cached as safetensors in the user cache
($GOOGLENET_CACHE, else $XDG_CACHE_HOME/googlenet, else ~/.cache/googlenet), keyed by
the source files' paths, sizes and modification times.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import UserError, first_line
from ..models.weights import IMAGENET_MEAN, IMAGENET_STD

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "imagefolder")
SPLITS = ("train", "test")
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
# Per-channel statistics of each training set, in [0, 1] pixel units.
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": (IMAGENET_MEAN, IMAGENET_STD),
}


@dataclass
class ArrayDataset:
    """A small dataset decoded once: uint8 images N x C x H x W and int64 labels N."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, limit: int | None) -> "ArrayDataset":
        """The first `limit` images (a fixed subset: the same every run)."""
        if limit is None or limit >= len(self):
            return self
        if limit <= 0:
            raise UserError(f"a limit must be a positive number of images, got {limit}")
        return ArrayDataset(self.images[:limit].contiguous(), self.labels[:limit].contiguous(),
                            self.class_names, self.name, self.mean, self.std)


def load_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None,
                 limit: int | None = None) -> ArrayDataset:
    """Load `split` ("train" | "test") of a small dataset as uint8 tensors.

    limit: keep the first `limit` images (deterministic). ImageFolder data is not an
    array dataset: use `image_folder(root, split)`.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use train or test")
    if name == "fashion-mnist":
        dataset = _fashion_mnist(split, data_dir)
    elif name in ("cifar10", "cifar100"):
        dataset = _cifar(name, split, data_dir)
    elif name == "imagefolder":
        raise UserError("imagefolder data is read file by file; use image_folder(root, split)")
    else:
        import difflib

        close = difflib.get_close_matches(name, DATASETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown dataset {name!r}{hint}; choose from {', '.join(DATASETS)}")
    return dataset.subset(limit)


# ------------------------------------------------------------------ decode cache
def cache_dir() -> Path:
    root = os.environ.get("GOOGLENET_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "googlenet"


def _cached(key_name: str, sources: list[Path], decode: Callable[[], tuple[torch.Tensor, torch.Tensor]]
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """decode() once; later calls read the safetensors cache (faster than gunzip/unpickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from ..fileio import atomic_write

    try:
        identity = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sources)
    except FileNotFoundError:  # a source is missing: decode() names it in its own words
        return decode()
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    path = cache_dir() / "datasets" / f"{key_name}-{digest}.safetensors"
    if path.is_file():
        try:
            tensors = load_file(str(path))
            return tensors["images"], tensors["labels"]
        except (SafetensorError, OSError, KeyError, ValueError):
            pass  # a damaged cache is rebuilt below
    images, labels = decode()
    try:
        atomic_write(path, lambda tmp: save_file({"images": images, "labels": labels}, tmp))
        _prune(path.parent, key_name, keep=path)
    except OSError:
        pass  # a read-only cache only costs speed
    return images, labels


CACHE_ENTRIES_PER_SPLIT = 4  # decoded copies kept per dataset split (one per source files' identity)


def _prune(folder: Path, key_name: str, keep: Path) -> None:
    """Remove all but the newest CACHE_ENTRIES_PER_SPLIT entries of `key_name`: each moved or
    re-downloaded copy of a dataset gets its own entry, and old ones would pile up for ever."""
    entries = sorted(folder.glob(f"{key_name}-" + "?" * 16 + ".safetensors"),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[CACHE_ENTRIES_PER_SPLIT:]:
        if old != keep:
            old.unlink(missing_ok=True)


# ------------------------------------------------------------------ Fashion-MNIST
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx(folder: Path, stem: str) -> Path | None:
    for sub in (folder, folder / "FashionMNIST" / "raw", folder / "raw"):
        for candidate in (sub / f"{stem}.gz", sub / stem):
            if candidate.is_file():
                return candidate
    return None


def _fmnist_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    images, labels = (_find_idx(folder, stem) for stem in _FMNIST_FILES[split])
    return (images, labels) if images and labels else None


def download_fashion_mnist(root: Path) -> Path:
    """torchvision's download into `root` (needs the internet); returns the folder used."""
    from torchvision.datasets import FashionMNIST

    FashionMNIST(str(root), train=True, download=True)
    FashionMNIST(str(root), train=False, download=True)
    return root


def _fashion_mnist(split: str, data_dir: str | os.PathLike | None) -> ArrayDataset:
    files = _locate_fashion_mnist(split, data_dir)
    images, labels = _cached(f"fashion-mnist-{split}", list(files), lambda: _decode_fashion_mnist(*files))
    mean, std = STATS["fashion-mnist"]
    return ArrayDataset(images, labels, list(FASHION_MNIST_CLASSES), "fashion-mnist", mean, std)


def _locate_fashion_mnist(split: str, data_dir: str | os.PathLike | None) -> tuple[Path, Path]:
    if data_dir is not None:
        if Path(data_dir).is_file():  # e.g. one of the four .gz files: the folder holding it is meant
            raise UserError(f"--data {data_dir} is a file; pass the folder holding the four Fashion-MNIST idx "
                            f"files (e.g. --data {Path(data_dir).parent})")
        if not Path(data_dir).is_dir():
            raise UserError(f"--data {data_dir}: no such folder; pass the folder holding the four "
                            f"Fashion-MNIST idx files, or leave --data out to use {FASHION_MNIST_SYSTEM_DIR}")
        found = _fmnist_files(Path(data_dir), split)
        if found:
            return found
        raise UserError(f"no Fashion-MNIST {split} files ({', '.join(_FMNIST_FILES[split])}[.gz]) in "
                        f"--data {data_dir}; " + _FMNIST_ROUTES)
    found = _fmnist_files(Path(FASHION_MNIST_SYSTEM_DIR), split)
    if found:
        return found
    download_root = cache_dir() / "downloads"
    found = _fmnist_files(download_root, split)
    if found:
        return found
    try:
        download_fashion_mnist(download_root)
    except Exception as e:  # no network, proxy, disk: all end in the same advice
        raise UserError(f"Fashion-MNIST not found and the download failed ({type(e).__name__}); "
                        + _FMNIST_ROUTES) from None
    found = _fmnist_files(download_root, split)
    if not found:
        raise UserError("Fashion-MNIST download left no idx files; " + _FMNIST_ROUTES)
    return found


_FMNIST_ROUTES = (
    "get it one of three ways: (1) pass --data DIR holding the four idx files "
    "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
    "t10k-labels-idx1-ubyte.gz); "
    f"(2) install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist, "
    f"files in {FASHION_MNIST_SYSTEM_DIR}); "
    "(3) connect to the internet so torchvision can download it into the user cache"
)


def _read_maybe_gz(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{path}: cannot read ({e}); replace the file") from None


def read_idx(path: Path, expected_dims: int) -> np.ndarray:
    """An idx file (unsigned bytes) as a numpy array; a wrong header or size is a UserError."""
    data = _read_maybe_gz(path)
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else -1
    if magic != 0x0800 + expected_dims:
        raise UserError(f"{path}: not an idx{expected_dims}-ubyte file (magic {magic:#010x}, expected "
                        f"{0x0800 + expected_dims:#010x}); replace the file")
    header = 4 + 4 * expected_dims
    if len(data) < header:
        raise UserError(f"{path}: truncated idx header; replace the file")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(expected_dims)]
    size = int(np.prod(dims))
    if len(data) != header + size:
        raise UserError(f"{path}: idx header says {dims} ({size} bytes) but the file holds "
                        f"{len(data) - header} bytes; replace the file")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _decode_fashion_mnist(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise UserError(f"{images_path} holds {images.shape[0]} images but {labels_path} "
                        f"{labels.shape[0]} labels; replace the files")
    return (torch.from_numpy(images.copy()).unsqueeze(1),  # N x 1 x 28 x 28
            torch.from_numpy(labels.astype(np.int64)))


# ------------------------------------------------------------------ CIFAR
class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR python archives hold: dicts, lists, bytes and numpy
    arrays. Any other global (os.system, builtins.eval, ...) is refused, so a tampered
    archive cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in protocol 2 pickles
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def safe_unpickle(data: bytes, source: str) -> dict:
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise UserError(f"{source}: not a plain CIFAR archive ({e}); download the official python "
                        "version from https://www.cs.toronto.edu/~kriz/cifar.html") from None
    except Exception as e:  # truncated or garbage
        raise UserError(f"{source}: cannot be read as a CIFAR pickle ({type(e).__name__}); replace it") from None
    if not isinstance(obj, dict):
        raise UserError(f"{source}: holds a {type(obj).__name__}, not a CIFAR batch dict")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


_CIFAR_LAYOUT = {
    # name: (folder in the archive, tarball, train members, test members, meta member, labels key, names key)
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz",
                [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
                "labels", "label_names"),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz",
                 ["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}


def _cifar_sources(name: str, data_dir: str | os.PathLike | None) -> tuple[Path, bool]:
    """(folder or tarball, is_tar) for the archive in data_dir."""
    folder, tarball = _CIFAR_LAYOUT[name][:2]
    if data_dir is None:
        raise UserError(f"{name} needs --data DIR holding {folder}/ or {tarball} (the python version from "
                        "https://www.cs.toronto.edu/~kriz/cifar.html)")
    root = Path(data_dir)
    if not root.exists():
        raise UserError(f"--data {data_dir}: no such folder; pass the folder holding {folder}/ or {tarball}")
    for candidate in (root / folder, root):
        if (candidate / _CIFAR_LAYOUT[name][4]).is_file():
            return candidate, False
    for candidate in (root / tarball, root):
        if candidate.is_file() and tarfile.is_tarfile(candidate):
            return candidate, True
    raise UserError(f"no {name} archive in --data {data_dir}: expected {folder}/ or {tarball} (the python "
                    "version from https://www.cs.toronto.edu/~kriz/cifar.html)")


def _cifar_members(source: Path, is_tar: bool, names: list[str]) -> Iterator[tuple[str, bytes]]:
    if not is_tar:
        for member in names:
            path = source / member
            if not path.is_file():
                raise UserError(f"{path} is missing; re-extract the CIFAR archive")
            yield str(path), path.read_bytes()
        return
    try:
        with tarfile.open(source, "r:*") as tar:
            by_base = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for member in names:
                info = by_base.get(member)
                if info is None:
                    raise UserError(f"{source} has no member {member}; download the archive again")
                f = tar.extractfile(info)
                assert f is not None
                yield f"{source}:{info.name}", f.read()
    except (tarfile.TarError, EOFError, zlib.error) as e:  # a cut-off download passes is_tarfile
        raise UserError(f"{source} is damaged or truncated ({first_line(e)}); download it again") from None


def _cifar(name: str, split: str, data_dir: str | os.PathLike | None) -> ArrayDataset:
    source, is_tar = _cifar_sources(name, data_dir)
    _, _, train_members, test_members, meta_member, labels_key, names_key = _CIFAR_LAYOUT[name]
    members = train_members if split == "train" else test_members
    sources = [source] if is_tar else [source / m for m in members]

    def decode() -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for where, data in _cifar_members(source, is_tar, members):
            batch = safe_unpickle(data, where)
            try:
                pixels = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                batch_labels = np.asarray(batch[labels_key], dtype=np.int64)
            except (KeyError, ValueError) as e:
                raise UserError(f"{where}: not a {name} batch ({e}); replace the archive") from None
            if len(pixels) != len(batch_labels):
                raise UserError(f"{where}: {len(pixels)} images but {len(batch_labels)} labels")
            images.append(pixels)
            labels.append(batch_labels)
        return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))

    images, labels = _cached(f"{name}-{split}", sources, decode)
    (where, meta_bytes), = _cifar_members(source, is_tar, [meta_member])
    meta = safe_unpickle(meta_bytes, where)
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(names_key, [])]
    if not class_names:
        raise UserError(f"{where}: no {names_key}; replace the archive")
    mean, std = STATS[name]
    return ArrayDataset(images, labels, class_names, name, mean, std)


# ------------------------------------------------------------------ ImageFolder
def read_rgb(path: str):
    """ImageFolder's loader through the guarded reader (no hangs on FIFOs, no decompression
    bombs, truncated files refused): a one-line ImageReadError naming the file, never a crash
    deep inside Pillow."""
    from PIL import Image

    from ..images import read_image

    return Image.fromarray(read_image(path, 3).permute(1, 2, 0).numpy())


def read_luma(path: str):
    """read_rgb for a 1-channel model: the image as a mode-L (luma) PIL image."""
    from PIL import Image

    from ..images import read_image

    return Image.fromarray(read_image(path, 1)[0].numpy())


def image_folder_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation of image-folder data: ImageNet's RGB statistics, or for luma images the mean
    of their three values (within 0.01 of the luma-weighted ones, well inside what fine-tuning absorbs)."""
    mean, std = STATS["imagefolder"]
    if channels == 1:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    return mean, std


def _shorter_folder_error(message: str) -> str:
    """torchvision names every class folder without images (all 1,000 of an empty ImageNet
    tree: a line of kilobytes); keep the count and the first few names."""
    import re

    found = re.fullmatch(r"Found no valid file for the classes (.*?)\. Supported extensions are: (.*)", message)
    if found is None:
        return message
    empty = found.group(1).split(", ")
    shown = ", ".join(empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
    return (f"{len(empty)} class folder(s) hold no image file ({shown}); add images to them or remove them "
            f"(image files end in {found.group(2)})")


def class_key(name: str) -> str:
    """A class name as a folder can spell it: "T-shirt/top" (no "/" in a folder name) is
    the folder "T-shirt_top", "tshirt top" or "TShirtTop" alike."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def match_class_names(names: Sequence[str], targets: Sequence[str]) -> list[int | None]:
    """For each of `names`, the index of the same class in `targets` by class_key, else None."""
    index: dict[str, int] = {}
    for i, name in enumerate(targets):
        index.setdefault(class_key(name), i)
    return [index.get(class_key(name)) for name in names]


def spread_over_classes(samples: Sequence, limit: int | None) -> list:
    """`limit` of an image folder's (path, label) samples (or indices), evenly spaced over the list.
    ImageFolder sorts them class by class, so the first N would be one class alone; evenly
    spaced picks keep every class (when N allows) and the same files every run."""
    if limit is None or limit >= len(samples):
        return list(samples)
    return [samples[i * len(samples) // limit] for i in range(limit)]


def image_folder(root: str | os.PathLike, split: str, transform=None, channels: int = 3):
    """An ImageFolder over root/<split> ("train" | "val"; "test" falls back to val/).

    The dataset has `.class_names` (sorted folder names, the same for train and val)
    and loads each image as RGB (`channels` 3) or luma (1) through `transform` (a PIL
    image if None); `.mean`/`.std` are the normalisation for that many channels.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    from torchvision.datasets import ImageFolder

    root = Path(root)
    candidates = {"train": ["train"], "val": ["val", "test"], "test": ["test", "val"]}.get(split)
    if candidates is None:
        raise UserError(f"unknown split {split!r} for an image folder; use train or val")
    folder = next((root / c for c in candidates if (root / c).is_dir()), None)
    if folder is None:
        wanted = " or ".join(f"{c}/" for c in candidates)
        missing = "" if root.is_dir() else " (the folder itself does not exist)"
        if root.name.lower() in ("train", "val", "test") and root.is_dir():  # --data DIR/test given
            missing += f"; it looks like a split itself: pass its parent, --data {root.parent}"
        raise UserError(f"{root} has no {wanted} folder{missing}; an image-folder dataset is "
                        f"DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg")
    try:
        dataset = ImageFolder(str(folder), transform=transform, loader=read_rgb if channels == 3 else read_luma)
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(f"{folder}: {_shorter_folder_error(first_line(e))}") from None
    dataset.class_names = list(dataset.classes)
    dataset.name = "imagefolder"
    dataset.in_chans = channels
    dataset.mean, dataset.std = image_folder_stats(channels)
    return dataset
