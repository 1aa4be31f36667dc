"""Safe image decoding for files that may come from a stranger.

`read_image(path, channels)` returns a uint8 C x H x W tensor or raises ImageReadError with
one line naming the file and the reason. It never hangs on a FIFO or device file, refuses
images whose declared size exceeds a pixel budget before decoding a single pixel
(decompression bombs), does not accept truncated files, and converts every mode Pillow
decodes (grayscale, RGBA, palette, CMYK, 16-bit, float, animated: first frame) to the
model's channel count.
"""
from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS

from .errors import RunError, UserError, first_line

# Pillow's own default (~89 megapixels, ~0.27 GB as RGB uint8): large enough for any photo,
# small enough that a forged header cannot exhaust memory.
DEFAULT_MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)


class ImageReadError(RunError):
    """A file that cannot be used as an image (exit code 1: the other files still run)."""


def read_image(path: str | os.PathLike, channels: int = 3, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode `path` to a uint8 tensor of shape channels x H x W (channels 1 or 3)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    path = Path(path)
    _check_regular_file(path)
    image = open_image(path, max_pixels)
    try:
        return pil_to_uint8(image, channels)
    except (ValueError, OSError) as e:  # a mode Pillow cannot convert (e.g. LAB)
        raise ImageReadError(f"{path}: cannot convert {image.mode} image to "
                             f"{'grayscale' if channels == 1 else 'RGB'} ({e})") from None


def read_readable(paths: Sequence[str | os.PathLike], channels: int, skipped: list[str],
                  where: str) -> Iterator[tuple[int, torch.Tensor]]:
    """(index, image) for each of `paths` that decodes, in order; the one-line reason of each
    that does not is appended to `skipped` (the caller reports them). If not one decodes, a
    UserError names `where` and the first reason: a batch of nothing would be a traceback."""
    decoded, first_failure = 0, ""
    for index, path in enumerate(paths):
        try:
            image = read_image(path, channels)
        except ImageReadError as e:
            skipped.append(str(e))
            first_failure = first_failure or str(e)
            continue
        decoded += 1
        yield index, image
    if paths and not decoded:
        raise UserError(f"none of the {len(paths)} image(s) in {where} could be read; the first: {first_failure}")


def open_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and fully decode the first frame, or raise ImageReadError."""
    try:
        with warnings.catch_warnings():
            # Pillow's plugin chatter (odd TIFF tags...) is not the user's business here.
            warnings.simplefilter("ignore", UserWarning)
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; make it an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageReadError(
                        f"{path}: declared size {width}x{height} exceeds the {max_pixels:,}-pixel limit "
                        "(possible decompression bomb); resize the image first")
                image.seek(0)  # animated images: classify the first frame
                image.load()  # decode now, inside the guard; truncated data raises here
                return image.copy()
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageReadError(f"{path}: image is larger than Pillow's {Image.MAX_IMAGE_PIXELS:,}-pixel "
                             "limit (possible decompression bomb); resize it first") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file Pillow can read "
                             "(use JPEG, PNG, BMP, GIF, TIFF or WebP)") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        raise ImageReadError(f"{path}: cannot decode image ({first_line(e, 160)}); the file is corrupt "
                             "or truncated") from None


def pil_to_uint8(image: Image.Image, channels: int) -> torch.Tensor:
    """Any Pillow mode -> uint8 tensor with 1 (luma) or 3 (RGB) channels.

    Alpha is dropped (as torchvision's and timm's folder loaders do), palette and CMYK
    images are converted by Pillow, and 16-bit or float images are rescaled to 8 bits
    instead of being clipped (Pillow's own I;16 -> L conversion saturates at 255).
    """
    image = _to_8bit(image)
    if image.mode in ("P", "PA"):  # palette (maybe with transparency): expand first
        image = image.convert("RGBA")
    target = "L" if channels == 1 else "RGB"
    if image.mode != target:
        image = image.convert(target)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _to_8bit(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.uint16)
        return Image.fromarray((values >> 8).astype(np.uint8), mode="L")
    if mode == "I":  # 32-bit integer; 16-bit PNG/TIFF data lands here with some Pillows
        values = np.asarray(image, dtype=np.int64)
        top = int(values.max(initial=0))
        scale = 255 if top <= 255 else (65535 if top <= 65535 else top)
        return Image.fromarray((np.clip(values, 0, None) * 255 // max(scale, 1)).astype(np.uint8), mode="L")
    if mode == "F":  # float TIFFs: [0, 1] if it looks normalised, else 0..255
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if values.size and values.max() <= 1.0:
            values = values * 255.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    return image


# The suffixes a folder's images are picked by: torchvision's ImageFolder's, plus GIF (readable here).
FOLDER_IMAGE_SUFFIXES = (*IMG_EXTENSIONS, ".gif")


def expand_folders(paths: list[str]) -> list[str]:
    """IMAGE arguments with each folder replaced by the image files directly in it (by suffix,
    sorted by name; not its subfolders). A folder holding none stays, to be reported when read."""
    expanded: list[str] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            inside = sorted(str(p) for p in path.iterdir()
                            if p.suffix.lower() in FOLDER_IMAGE_SUFFIXES and not p.is_dir())
            expanded.extend(inside or [name])
        else:
            expanded.append(name)
    return expanded


def _check_regular_file(path: Path) -> None:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except OSError as e:
        raise ImageReadError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageReadError(f"{path}: a folder with no image files directly in it "
                             f"({', '.join(FOLDER_IMAGE_SUFFIXES)}); pass image files or a folder of them")
    if not stat.S_ISREG(info.st_mode):  # FIFOs and devices could block or never end
        raise ImageReadError(f"{path}: not a regular file")
    if info.st_size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise ImageReadError(f"{path}: permission denied")
