"""Batches from an ImageFolder tree (ImageNet-style data read file by file).

Same interface as `gpu_loader.TensorLoader` (train_batches / eval_batches /
steps_per_epoch / raw_image) so the training loop does not care where images come
from. Files are decoded and augmented per image in DataLoader workers; the visiting
order is the same seeded `SampleStream`, split between ranks per global batch.
"""
from __future__ import annotations

import math
import sys
from typing import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .datasets import spread_over_classes
from .gpu_loader import GlobalBatchMixin, SampleStream, mix_seed


class _Indexed(Dataset):
    def __init__(self, dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        # An unreadable file must not end a long run: say so once and use the next readable image.
        from ..errors import RunError
        from ..images import ImageReadError

        for offset in range(len(self.indices)):
            try:
                return self.dataset[self.indices[(i + offset) % len(self.indices)]]
            except ImageReadError as e:
                if str(e) not in _REPORTED:
                    _REPORTED.add(str(e))
                    print(f"warning: skipping unreadable image {e}", file=sys.stderr, flush=True)
        raise RunError(f"none of the {len(self.indices)} images in this batch range can be read; "
                       "check the image folder (see the warnings above)")


_REPORTED: set[str] = set()  # reasons already printed by this process (each worker has its own)


class FolderLoader(GlobalBatchMixin):
    """Train/eval batches of an image_folder() dataset through torchvision transforms."""

    def __init__(self, dataset, batch_size: int, device: torch.device | str, *, train_transform=None,
                 eval_transform=None, workers: int = 4, seed: int = 0, rank: int = 0, world_size: int = 1,
                 channels_last: bool = True) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.workers = workers
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.channels_last = channels_last
        self.stream = SampleStream(len(dataset), seed)
        self.labels = torch.tensor(dataset.targets, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.dataset)


    def _loader(self, indices: list[int], transform, generator_seed: int) -> DataLoader:
        self.dataset.transform = transform
        generator = torch.Generator().manual_seed(generator_seed)  # seeds the workers' RNGs
        return DataLoader(_Indexed(self.dataset, indices), batch_size=self.batch_size, shuffle=False,
                          num_workers=self.workers, generator=generator,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    def _to_device(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def train_batches(self, first_step: int, steps: int, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        global_batch = min(self.global_batch, len(self))
        per_rank = math.ceil(global_batch / self.world_size)
        indices: list[int] = []
        for step in range(first_step, first_step + steps):
            batch = self.stream.take(step * global_batch, global_batch)
            indices += batch[self.rank * per_rank: (self.rank + 1) * per_rank].tolist()
        seed = mix_seed(self.seed, epoch, self.rank, first_step)
        for x, y in self._loader(indices, self.train_transform, seed):
            yield self._to_device(x, y)

    def eval_batches(self, limit: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """`limit` test images (all if None) spread over the class-sorted files, so a
        per-epoch subset tests every class; each rank takes a contiguous block of them."""
        chosen = spread_over_classes(range(len(self)), limit)
        per_rank = math.ceil(len(chosen) / self.world_size)
        indices = chosen[self.rank * per_rank: (self.rank + 1) * per_rank]
        for x, y in self._loader(indices, self.eval_transform, self.seed):
            yield self._to_device(x, y)

    def raw_image(self, index: int) -> Tensor:
        """The evaluation view of one image as uint8 C x H x W (for plots)."""
        self.dataset.transform = None
        from torchvision.transforms import v2

        from ..images import ImageReadError

        try:
            image = self.dataset[index][0]
        except ImageReadError:  # already reported; the plot shows a blank tile
            return torch.zeros(3, 8, 8, dtype=torch.uint8)
        resized = self.eval_transform.transforms[:3] if self.eval_transform is not None else []
        return v2.Compose([*resized, v2.PILToTensor()])(image)
