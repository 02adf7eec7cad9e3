"""Uploaded images: decoded from bytes by content (never by name), kept in memory with a cap.

Nothing here touches the file system: an upload is decoded with PIL from its bytes, checked
against byte and pixel limits before the pixels are decoded, and held in an in-memory
least-recently-used store. Bundled sample images are *pinned* (never evicted).
"""

from __future__ import annotations

import io
import secrets
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from semcorr.errors import ImageError
from semcorr.io.image import to_rgb8

__all__ = [
    "ALLOWED_FORMATS",
    "ImageStore",
    "ImageTooLargeError",
    "NotAnImageError",
    "StoredImage",
    "UnknownImageError",
    "decode_image_bytes",
]

#: Formats accepted from uploads, as PIL names them after sniffing the content.
ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"})


class NotAnImageError(ImageError):
    """Bytes that are not an image of an accepted format."""


class ImageTooLargeError(ImageError):
    """An image over the byte or pixel limit."""


class UnknownImageError(ImageError, KeyError):
    """An image id that is not (or no longer) in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class StoredImage:
    """One image held by the server.

    Attributes:
        id: opaque random id (or the sample's fixed id).
        name: display name only (the upload's base name or the sample's); never used as a path.
        pixels: ``(3, H, W)`` uint8 (a quarter of the memory of floats).
        png: the image re-encoded as PNG, served back to the page.
        pinned: bundled sample, never evicted.
    """

    id: str
    name: str
    pixels: torch.Tensor
    png: bytes
    pinned: bool = False

    @property
    def image(self) -> torch.Tensor:
        """``(3, H, W)`` float in [0, 1] (the same values :func:`semcorr.io.load_image` gives)."""
        return self.pixels.float().div_(255.0)

    @property
    def width(self) -> int:
        return int(self.pixels.shape[-1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[-2])

    @property
    def num_pixels(self) -> int:
        return self.width * self.height


def _safe_name(name: str | None) -> str:
    """A display name from a client-supplied file name: base name only, printable, short."""
    if not name:
        return "upload"
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(c for c in base if c.isprintable() and c not in "<>\"'&")[:80]
    return cleaned or "upload"


def decode_image_bytes(
    data: bytes, label: str, max_bytes: int, max_pixels: int
) -> torch.Tensor:
    """Decode uploaded bytes into an RGB image ``(3, H, W)`` uint8.

    The format is sniffed from the content by PIL (the name is never consulted), the size in
    pixels is checked from the header before any pixel is decoded, and PIL's decompression-bomb
    warning is turned into a refusal.

    Args:
        data: the uploaded bytes.
        label: how to name the upload in error messages.
        max_bytes: refuse more bytes than this.
        max_pixels: refuse images with more pixels than this.

    Raises:
        ImageTooLargeError: over ``max_bytes`` or ``max_pixels``.
        NotAnImageError: not an image of :data:`ALLOWED_FORMATS`, or truncated/corrupt.
    """
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"{label}: {len(data)} bytes is over the limit of {max_bytes}")
    if not data:
        raise NotAnImageError(f"{label}: empty upload")
    try:
        with warnings.catch_warnings():  # PIL warns inside Image.open already
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
        with opened as img:
            if img.format not in ALLOWED_FORMATS:
                raise NotAnImageError(
                    f"{label}: format {img.format} is not accepted "
                    f"({', '.join(sorted(ALLOWED_FORMATS))})"
                )
            w, h = img.size
            if w * h > max_pixels:
                raise ImageTooLargeError(
                    f"{label}: {w}x{h} pixels is over the limit of {max_pixels}"
                )
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img.load()
                rgb = to_rgb8(ImageOps.exif_transpose(img))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{label}: refused as a possible decompression bomb ({exc})"
                                 ) from None
    except UnidentifiedImageError:
        raise NotAnImageError(f"{label}: not an image of an accepted format "
                              f"({', '.join(sorted(ALLOWED_FORMATS))})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise NotAnImageError(f"{label}: not a readable image ({exc})") from None
    if rgb.width * rgb.height > max_pixels:  # EXIF rotation keeps the count; belt and braces
        raise ImageTooLargeError(f"{label}: over the limit of {max_pixels} pixels")
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    if image.dtype == torch.uint8:
        return image.cpu().contiguous()
    return image.detach().cpu().float().mul(255).round().clamp(0, 255).to(torch.uint8)


def _encode_png(pixels: torch.Tensor) -> bytes:
    array = pixels.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class ImageStore:
    """A thread-safe in-memory store of images with a cap on uploads and LRU eviction.

    Args:
        max_images: uploads kept at once (pinned samples do not count); the least recently
            used upload is evicted beyond it.
        max_total_pixels: pixels of all uploads together; least recently used uploads are
            evicted beyond it (the newest upload is always kept).
        on_evict: called with an evicted id (e.g. to drop cached features).
    """

    def __init__(self, max_images: int = 16, max_total_pixels: int = 100_000_000,
                 on_evict: Callable[[str], None] | None = None) -> None:
        if max_images < 2:
            raise ValueError("max_images must be at least 2 (a source and a target)")
        self.max_images = max_images
        self.max_total_pixels = max_total_pixels
        self._on_evict = on_evict
        self._images: OrderedDict[str, StoredImage] = OrderedDict()  # least recently used first
        self._pinned: list[str] = []  # in the order they were added
        self._lock = threading.Lock()

    def add(self, image: torch.Tensor, name: str | None, pinned: bool = False,
            image_id: str | None = None) -> StoredImage:
        """Store ``(3, H, W)`` (uint8, or float in [0, 1]) and return its record (a fresh random
        id unless given)."""
        pixels = _to_uint8(image)
        stored = StoredImage(
            id=image_id or secrets.token_hex(8),
            name=_safe_name(name),
            pixels=pixels,
            png=_encode_png(pixels),
            pinned=pinned,
        )
        evicted: list[str] = []
        with self._lock:
            if pinned and stored.id not in self._pinned:
                self._pinned.append(stored.id)
            self._images[stored.id] = stored
            uploads = [k for k, v in self._images.items() if not v.pinned]
            total = sum(self._images[k].num_pixels for k in uploads)
            while len(uploads) > 1 and (len(uploads) > self.max_images
                                        or total > self.max_total_pixels):
                oldest = uploads.pop(0)
                total -= self._images[oldest].num_pixels
                del self._images[oldest]
                evicted.append(oldest)
        for image_id_ in evicted:
            if self._on_evict is not None:
                self._on_evict(image_id_)
        return stored

    def get(self, image_id: str) -> StoredImage:
        """The image ``image_id`` (marked as recently used).

        Raises:
            UnknownImageError: not in the store (never uploaded, or evicted).
        """
        with self._lock:
            stored = self._images.get(image_id)
            if stored is None:
                raise UnknownImageError(f"image {image_id[:64]!r}: unknown id (or evicted)")
            self._images.move_to_end(image_id)
            return stored

    def pinned(self) -> list[StoredImage]:
        """The pinned (sample) images, in insertion order."""
        with self._lock:
            return [self._images[k] for k in self._pinned]

    def __len__(self) -> int:
        with self._lock:
            return len(self._images)

    def __contains__(self, image_id: object) -> bool:
        with self._lock:
            return image_id in self._images
