"""Stage 0: reading images from disk (and from uploaded bytes).

Every image semcorr reads goes through :func:`open_image`: the pixel count is checked from the
header, before a single pixel is decoded, against a cap (default :data:`MAX_PIXELS`, 50
megapixels; ``SEMCORR_MAX_PIXELS`` or the ``max_pixels`` argument change it), and PIL's own
decompression-bomb warning, which fires inside ``Image.open`` itself, is a refusal too.
:func:`to_rgb8` converts any mode to 8-bit RGB by the pixel type's real range, so a 16-bit PNG or a
float TIFF is not clipped to white or black.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from semcorr.errors import ImageError

__all__ = ["MAX_PIXELS", "load_image", "load_pil", "open_image", "pixel_cap", "pil_to_tensor",
           "to_rgb8"]

#: Default cap on an image's pixel count (50 megapixels), checked from the header.
MAX_PIXELS = 50_000_000
#: Environment variable overriding :data:`MAX_PIXELS` (an integer pixel count).
MAX_PIXELS_ENV = "SEMCORR_MAX_PIXELS"


def pixel_cap() -> int:
    """The pixel cap in force: ``$SEMCORR_MAX_PIXELS`` if set, else :data:`MAX_PIXELS`.

    Raises:
        ImageError: when the variable is not a positive integer.
    """
    text = os.environ.get(MAX_PIXELS_ENV)
    if text is None:
        return MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ImageError(f"{MAX_PIXELS_ENV}={text!r}: expected a positive number of pixels")
    return value


_BOMB_FILTER = ("error", None, Image.DecompressionBombWarning, None, 0)
_bomb_lock = threading.Lock()
_bomb_users = 0


@contextmanager
def _bomb_warnings_refused() -> Iterator[None]:
    """PIL's decompression-bomb warning raised as an error inside the block.

    Safe when several threads decode at once (see :mod:`semcorr.io.stream`), unlike
    ``warnings.catch_warnings``, which saves and restores the process-wide filter list and so
    can drop another thread's filter mid-decode: the first thread in adds one filter for that
    one warning, the last one out removes it; nothing else in the filter list is touched.
    """
    global _bomb_users
    with _bomb_lock:
        if _bomb_users == 0:
            warnings.filters.insert(0, _BOMB_FILTER)
            warnings._filters_mutated()  # type: ignore[attr-defined]  # as filterwarnings does
        _bomb_users += 1
    try:
        yield
    finally:
        with _bomb_lock:
            _bomb_users -= 1
            if _bomb_users == 0:
                if _BOMB_FILTER in warnings.filters:
                    warnings.filters.remove(_BOMB_FILTER)
                warnings._filters_mutated()  # type: ignore[attr-defined]


@contextmanager
def open_image(source: str | os.PathLike[str] | bytes, label: str | None = None,
               limit: int | None = None) -> Iterator[Image.Image]:
    """Open an image lazily, refusing it from its header when it has too many pixels.

    Args:
        source: a file path, or the bytes of an image file.
        label: how to name the image in errors (default: the path).
        limit: the pixel cap (default: :func:`pixel_cap`).

    Yields:
        The opened PIL image (pixels not yet decoded).

    Raises:
        ImageError: naming the image when it is missing, unreadable or too large.
    """
    limit = pixel_cap() if limit is None else limit
    if isinstance(source, bytes):
        name, stream = label or "image", io.BytesIO(source)
    else:
        path = Path(source)
        name, stream = label or str(path), path
        if not path.is_file():
            raise ImageError(f"{name}: no such image file")
    try:
        with _bomb_warnings_refused():
            image = Image.open(stream)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: not a readable image ({exc})") from None
    with image:
        w, h = image.size
        if w * h > limit:
            raise ImageError(f"{name}: {w}x{h} pixels is over the limit of {limit} "
                             f"(possible decompression bomb; raise it with {MAX_PIXELS_ENV})")
        yield image


def _scaled_to_uint8(array: np.ndarray) -> np.ndarray:
    """A single-channel integer or float array → uint8 by its type's real range.

    Unsigned 16-bit data (and 32-bit integers within 16 bits, as PIL stores 16-bit PNGs) is
    divided by 65535; float data already in [0, 1] is kept, other floats are stretched from
    their finite minimum to their finite maximum; non-finite values become 0.
    """
    data = array.astype(np.float64)
    finite = np.isfinite(data)
    data[~finite] = 0.0
    if np.issubdtype(array.dtype, np.integer):
        top = 255.0 if data.max(initial=0) <= 255 else 65535.0
        if data.max(initial=0) > 65535 or data.min(initial=0) < 0:
            low, top = data.min(), data.max()
            data = data - low
            top = top - low
        scaled = data / max(top, 1.0)
    elif finite.any() and data[finite].min() >= 0.0 and data[finite].max() <= 1.0:
        scaled = data
    else:
        low = data[finite].min() if finite.any() else 0.0
        high = data[finite].max() if finite.any() else 1.0
        scaled = (data - low) / (high - low) if high > low else np.zeros_like(data)
        scaled[~finite] = 0.0
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def to_rgb8(image: Image.Image) -> Image.Image:
    """Any PIL image → 8-bit RGB; 16-bit and 32-bit integer and float images are scaled by
    their real range (see :func:`_scaled_to_uint8`) instead of being clipped."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        grey = _scaled_to_uint8(np.asarray(image))
        return Image.fromarray(grey, mode="L").convert("RGB")
    return image.convert("RGB")


def load_pil(path: str | os.PathLike[str], max_pixels: int | None = None) -> Image.Image:
    """Open an image file as an RGB PIL image with its EXIF orientation applied.

    Args:
        path: any format PIL reads (PNG, JPEG, WebP, TIFF, BMP, ...).
        max_pixels: refuse images with more pixels than this (default: the cap in force,
            :func:`pixel_cap`).

    Raises:
        ImageError: naming the file, when it is missing, unreadable or too large.
    """
    with open_image(path, limit=max_pixels) as image:
        try:
            with _bomb_warnings_refused():
                image.load()
                oriented = ImageOps.exif_transpose(image)
            return to_rgb8(oriented)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(f"{path}: refused as a possible decompression bomb ({exc})"
                             ) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(f"{path}: not a readable image ({exc})") from None


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image → float tensor ``(3, H, W)`` in [0, 1] (any mode, via :func:`to_rgb8`)."""
    array = np.asarray(to_rgb8(image), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def load_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> torch.Tensor:
    """Load an image file as a float tensor ``(3, H, W)`` in [0, 1], RGB, EXIF-oriented.

    Raises:
        ImageError: naming the file, when it is missing, unreadable or too large.
    """
    return pil_to_tensor(load_pil(path, max_pixels))
