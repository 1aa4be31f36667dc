"""Device-resident batches for small datasets: no DataLoader, no workers.

The whole uint8 dataset sits on the training device (60,000 Fashion-MNIST images are
47 MB); each batch is gathered by index and augmented as one tensor there (see the
batched functions in transforms.py). On CUDA this removes the input pipeline from the
critical path; on CPU it is also the fastest path for small data.

The visiting order is a `SampleStream`: permutation after permutation of the dataset,
each seeded by (seed, pass), consumed in global batches. Step k of training always
reads the same samples, whatever the epoch length, so a run resumed at step k replays
exactly; with several processes (rank, world_size) each global batch is split between
ranks, and augmentation draws from a per-(seed, epoch, rank) generator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from . import transforms as T
from .datasets import ArrayDataset


@dataclass(frozen=True)
class BatchAugment:
    """Which batched augmentations to apply (all off = evaluation)."""

    crop_padding: int = 0  # pixels of zero padding before a random crop of the original size
    flip: bool = False  # horizontal flip with probability 1/2
    resized_crop_min_area: float = 0.0  # > 0: random resized crop, area share in [min, 1], aspect 3/4-4/3
    random_interpolation: bool = False  # resized crop: bilinear / nearest / bicubic per batch
    photometric: float = 0.0  # brightness and contrast factors in [1 - p, 1 + p]
    erasing: float = 0.0  # probability of erasing one random rectangle per image


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (seed, epoch, rank, ...)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) + 0x9E3779B9 + (value << 6) + (value >> 2))) & ((1 << 63) - 1)
    return value


class SampleStream:
    """Sample indices in training order: randperm(n) for pass 0, then pass 1, ...

    Each pass's permutation is drawn on the CPU (so the order is the same on every
    device) and kept, on `device`, while it is in use: a step slices it there, with no
    new permutation and no host-to-device copy (a synchronising one on CUDA) per step.
    """

    KEPT_PASSES = 2  # the pass in use and the next (a batch can straddle them)

    def __init__(self, n: int, seed: int, shuffle: bool = True, device: torch.device | str = "cpu") -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.device = torch.device(device)
        self._kept: dict[int, Tensor] = {}

    def _pass(self, index: int) -> Tensor:
        kept = self._kept.get(index)
        if kept is not None:
            return kept
        if not self.shuffle:
            order = torch.arange(self.n)
        else:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, index))
            order = torch.randperm(self.n, generator=generator)
        order = order.to(self.device)
        for old in sorted(self._kept)[: max(0, len(self._kept) - self.KEPT_PASSES + 1)]:
            del self._kept[old]
        self._kept[index] = order
        return order

    def take(self, start: int, count: int) -> Tensor:
        """Positions [start, start + count) of the endless stream (on `device`)."""
        parts, position = [], start
        while position < start + count:
            pass_index, offset = divmod(position, self.n)
            chunk = self._pass(pass_index)[offset: offset + (start + count - position)]
            parts.append(chunk)
            position += len(chunk)
        if len(parts) == 1:
            return parts[0]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long, device=self.device)


class GlobalBatchMixin:
    """Batch arithmetic shared by the loaders: `batch_size` is per process."""

    batch_size: int
    world_size: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        """Training steps in one pass over the data (at least one)."""
        return max(1, len(self) // self.global_batch)


class TensorLoader(GlobalBatchMixin):
    """Batches of a uint8 ArrayDataset kept on `device`, augmented there, normalised to float.

    Yields (images N x C x S x S float32, channels_last; labels int64), both on `device`.
    """

    def __init__(self, data: ArrayDataset, batch_size: int, device: torch.device | str = "cpu", *,
                 augment: BatchAugment = BatchAugment(), input_size: int | None = None,
                 in_chans: int | None = None, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, channels_last: bool = True) -> None:
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.batch_size = batch_size
        self.augment = augment
        self.input_size = input_size or data.image_size
        self.in_chans = in_chans or data.in_chans
        if self.in_chans not in (data.in_chans, 3) or (self.in_chans == 3 and data.in_chans not in (1, 3)):
            raise ValueError(f"cannot feed {data.in_chans}-channel images to a {self.in_chans}-channel model")
        repeat = self.in_chans // data.in_chans
        self.mean = torch.tensor(list(data.mean) * repeat, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(list(data.std) * repeat, device=self.device).view(1, -1, 1, 1)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.channels_last = channels_last
        self.stream = SampleStream(len(data), seed, shuffle, device=self.device)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


    def _rank_batch(self, step: int) -> Tensor:
        # A dataset smaller than one global batch is used whole at every step.
        global_batch = min(self.global_batch, len(self))
        indices = self.stream.take(step * global_batch, global_batch)
        per_rank = math.ceil(global_batch / self.world_size)
        return indices[self.rank * per_rank: (self.rank + 1) * per_rank]

    def train_batches(self, first_step: int, steps: int, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """`steps` augmented batches starting at global step `first_step`."""
        for step in range(first_step, first_step + steps):
            # Seeded by the step itself, so a run resumed at any step (mid-epoch after a Ctrl-C
            # included) draws the crops an uninterrupted run draws there. Seeding only where a call
            # starts matched at epoch boundaries alone. (A host-side seed: no device sync.)
            generator = torch.Generator(device=self.device).manual_seed(mix_seed(self.seed, epoch, self.rank, step))
            index = self._rank_batch(step)  # already on the device: no copy, no sync
            yield self.prepare(self.images[index], generator), self.labels[index]

    def eval_batches(self, limit: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """The first `limit` images in order, split between ranks in contiguous blocks."""
        n = min(len(self), limit or len(self))
        per_rank = math.ceil(n / self.world_size)
        start, stop = self.rank * per_rank, min(n, (self.rank + 1) * per_rank)
        for lo in range(start, stop, self.batch_size):
            hi = min(stop, lo + self.batch_size)
            yield self.prepare(self.images[lo:hi], None), self.labels[lo:hi]

    def raw_image(self, index: int) -> Tensor:
        """One test image as stored (uint8 C x H x W, on the CPU), for plots."""
        return self.images[index].cpu()

    def prepare(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        """uint8 batch -> augmented (if a generator is given), normalised float batch."""
        a = self.augment if generator is not None else BatchAugment()
        x = images
        if a.crop_padding:
            x = T.random_crop(x, a.crop_padding, generator)
        if a.flip:
            x = T.random_flip(x, generator)
        x = x.float().div_(255)
        if a.resized_crop_min_area > 0:
            mode = "bilinear"
            if a.random_interpolation:
                pick = int(torch.randint(0, 3, (1,), generator=generator, device=x.device))
                mode = ("bilinear", "nearest", "bicubic")[pick]
            x = T.random_resized_crop(x, self.input_size, generator, scale=(a.resized_crop_min_area, 1.0),
                                      mode=mode).clamp_(0, 1)
        elif x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              antialias=True, align_corners=False)
        if a.photometric > 0:
            x = T.random_brightness_contrast(x, generator, a.photometric)
        if x.shape[1] != self.in_chans:
            x = x.expand(-1, self.in_chans, -1, -1)
        x = (x - self.mean) / self.std
        if a.erasing > 0:
            x = T.random_erasing(x, generator, p=a.erasing)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
