"""Augmentations, in two forms.

Per image (PIL, torchvision.transforms.v2) for ImageFolder data read file by file:
  - `paper_train_transform`: the paper's crops (8%-100% of the area, aspect 3/4-4/3),
    photometric distortions and a random interpolation per image;
  - `finetune_train_transform`, `eval_transform` (resize shorter side, centre crop).

Batched (uint8 N x C x H x W tensors on any device) for small datasets held in memory,
used by `gpu_loader.TensorLoader`: random crop with padding, horizontal flip, random
resized crop, brightness/contrast jitter and random erasing, each drawing its
randomness from one torch.Generator so a seed replays a run exactly.
"""
from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from torch import Tensor

# ------------------------------------------------------------------ per image (PIL)


class RandomInterpolationResizedCrop(torch.nn.Module):
    """RandomResizedCrop whose interpolation is drawn per image (the paper varied it)."""

    def __init__(self, size: int, scale: tuple[float, float], ratio: tuple[float, float]) -> None:
        super().__init__()
        from torchvision.transforms import InterpolationMode, v2

        self.crops = [v2.RandomResizedCrop(size, scale=scale, ratio=ratio, interpolation=mode, antialias=True)
                      for mode in (InterpolationMode.BILINEAR, InterpolationMode.NEAREST,
                                   InterpolationMode.BICUBIC, InterpolationMode.BOX,
                                   InterpolationMode.HAMMING, InterpolationMode.LANCZOS)]

    def forward(self, image):
        # Python's `random` is seeded per DataLoader worker by torch, like torchvision's own transforms.
        return random.choice(self.crops)(image)


def _to_normalized_tensor(mean, std):
    from torchvision.transforms import v2

    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def paper_train_transform(size: int, mean, std, min_area: float = 0.08, photometric: float = 0.4,
                          random_interpolation: bool = True):
    from torchvision.transforms import InterpolationMode, v2

    ratio = (3 / 4, 4 / 3)
    crop = (RandomInterpolationResizedCrop(size, (min_area, 1.0), ratio) if random_interpolation
            else v2.RandomResizedCrop(size, scale=(min_area, 1.0), ratio=ratio,
                                      interpolation=InterpolationMode.BILINEAR, antialias=True))
    steps = [v2.RGB(), crop, v2.RandomHorizontalFlip()]
    if photometric > 0:
        steps.append(v2.ColorJitter(brightness=photometric, contrast=photometric, saturation=photometric))
    return v2.Compose(steps + _to_normalized_tensor(mean, std))


def finetune_train_transform(size: int, mean, std, min_area: float = 0.25):
    from torchvision.transforms import v2

    return v2.Compose([v2.RGB(), v2.RandomResizedCrop(size, scale=(min_area, 1.0), antialias=True),
                       v2.RandomHorizontalFlip()] + _to_normalized_tensor(mean, std))


def eval_transform(size: int, resize: int, mean, std):
    from torchvision.transforms import v2

    return v2.Compose([v2.RGB(), v2.Resize(resize, antialias=True), v2.CenterCrop(size)]
                      + _to_normalized_tensor(mean, std))


# ------------------------------------------------------------------ batched (tensors)


def _rand(n: int, generator: torch.Generator, device) -> Tensor:
    return torch.rand(n, generator=generator, device=device)


def random_crop(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Pad each image by `padding` (zeros) and cut a random window of the original size."""
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # N x 1 x H x 1
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # N x 1 x 1 x W
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(x: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    flip = _rand(x.shape[0], generator, x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_resized_crop(x: Tensor, size: int, generator: torch.Generator,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        mode: str = "bilinear") -> Tensor:
    """Per-image crop covering `scale` of the area with aspect in `ratio`, resized to
    size x size in one grid_sample (float input). Windows larger than the image are
    shrunk to fit, as torchvision's fallback does."""
    n, device = x.shape[0], x.device
    area = scale[0] + (scale[1] - scale[0]) * _rand(n, generator, device)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * _rand(n, generator, device)
    aspect = torch.exp(log_r)
    # Crop width/height as fractions of the image side.
    cw = torch.sqrt(area * aspect).clamp(max=1.0)
    ch = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (1 - cw) * (2 * _rand(n, generator, device) - 1)  # centre in [-1, 1] units
    cy = (1 - ch) * (2 * _rand(n, generator, device) - 1)
    theta = torch.zeros(n, 2, 3, device=device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = cw, cx
    theta[:, 1, 1], theta[:, 1, 2] = ch, cy
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def random_brightness_contrast(x: Tensor, generator: torch.Generator, strength: float) -> Tensor:
    """Photometric jitter on [0, 1] floats: brightness and contrast factors in [1-s, 1+s]."""
    n, device = x.shape[0], x.device
    brightness = 1 + strength * (2 * _rand(n, generator, device) - 1)
    contrast = 1 + strength * (2 * _rand(n, generator, device) - 1)
    x = x * brightness[:, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast[:, None, None, None] + mean).clamp(0, 1)


def random_erasing(x: Tensor, generator: torch.Generator, p: float = 0.5,
                   scale: tuple[float, float] = (0.02, 0.25), ratio: tuple[float, float] = (0.3, 3.3),
                   value: float = 0.0) -> Tensor:
    """Erase one random rectangle (area `scale`, aspect `ratio`) in a `p` share of the images.

    Applied after normalisation, value 0 is the dataset mean."""
    n, _, h, w = x.shape
    device = x.device
    apply = _rand(n, generator, device) < p
    area = (scale[0] + (scale[1] - scale[0]) * _rand(n, generator, device)) * h * w
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * _rand(n, generator, device)
    aspect = torch.exp(log_r)
    eh = torch.sqrt(area * aspect).round().clamp(1, h)
    ew = torch.sqrt(area / aspect).round().clamp(1, w)
    y0 = ((h - eh + 1) * _rand(n, generator, device)).floor()
    x0 = ((w - ew + 1) * _rand(n, generator, device)).floor()
    ys = torch.arange(h, device=device)[None, :, None]
    xs = torch.arange(w, device=device)[None, None, :]
    inside = ((ys >= y0[:, None, None]) & (ys < (y0 + eh)[:, None, None])
              & (xs >= x0[:, None, None]) & (xs < (x0 + ew)[:, None, None]) & apply[:, None, None])
    return x.masked_fill(inside[:, None], value)
