"""Stage 0: reading images from disk."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from semcorr.errors import ImageError

__all__ = ["MAX_PIXELS", "load_image", "load_pil", "pil_to_tensor"]

#: Images with more pixels than this are refused (decompression-bomb guard): 178 megapixels,
#: which is what PIL itself treats as an outright bomb.
MAX_PIXELS = 178_956_970


def load_pil(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image file as an RGB PIL image with its EXIF orientation applied.

    Args:
        path: any format PIL reads (PNG, JPEG, WebP, TIFF, BMP, ...).
        max_pixels: refuse images with more pixels than this.

    Raises:
        ImageError: naming the file, when it is missing, unreadable or too large.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(
                    f"{path}: {w}x{h} pixels is over the limit of {max_pixels} "
                    "(possible decompression bomb)"
                )
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img.load()
                img = ImageOps.exif_transpose(img)
            return img.convert("RGB")
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: refused as a possible decompression bomb ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from None


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image → float tensor ``(3, H, W)`` in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def load_image(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Load an image file as a float tensor ``(3, H, W)`` in [0, 1], RGB, EXIF-oriented.

    Raises:
        ImageError: naming the file, when it is missing, unreadable or too large.
    """
    return pil_to_tensor(load_pil(path, max_pixels))
