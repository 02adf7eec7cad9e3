"""Decoding uploads by content, the limits, and the in-memory store with eviction."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from semcorr.server.uploads import (
    ImageStore,
    ImageTooLargeError,
    NotAnImageError,
    UnknownImageError,
    decode_image_bytes,
)

MB = 1024 * 1024


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _gradient(width: int = 24, height: int = 16) -> Image.Image:
    x = torch.arange(width).view(1, -1).expand(height, -1)
    y = torch.arange(height).view(-1, 1).expand(-1, width)
    array = torch.stack([x * 10, y * 15, (x + y) * 5], dim=-1).clamp(0, 255).to(torch.uint8)
    return Image.fromarray(array.numpy())


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` with one tiny (wrong) data chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


class TestDecode:
    @pytest.mark.parametrize("fmt", ["PNG", "BMP", "WEBP"])
    def test_lossless_formats_decode_exactly(self, fmt: str) -> None:
        image = _gradient()
        decoded = decode_image_bytes(_encode(image, fmt), "x", MB, 10_000)
        assert decoded.shape == (3, 16, 24) and decoded.dtype == torch.uint8
        expected = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        if fmt == "WEBP":  # PIL's default WebP is lossy
            assert (decoded.float() - expected.float()).abs().mean() < 12
        else:
            assert torch.equal(decoded, expected)

    def test_name_is_never_trusted(self) -> None:
        # JPEG bytes decode whatever the label says; text bytes named .png do not.
        jpeg = _encode(_gradient(), "JPEG")
        assert decode_image_bytes(jpeg, "photo.png", MB, 10_000).shape == (3, 16, 24)
        with pytest.raises(NotAnImageError, match="cat.png"):
            decode_image_bytes(b"<html>hello</html>", "cat.png", MB, 10_000)

    def test_refuses_formats_outside_the_list(self) -> None:
        with pytest.raises(NotAnImageError, match="PPM is not accepted"):
            decode_image_bytes(_encode(_gradient(), "PPM"), "x.ppm", MB, 10_000)

    def test_truncated_image(self) -> None:
        data = _encode(_gradient(64, 64), "PNG")
        with pytest.raises(NotAnImageError, match="not a readable image"):
            decode_image_bytes(data[: len(data) // 2], "half.png", MB, 10_000)

    def test_empty(self) -> None:
        with pytest.raises(NotAnImageError, match="empty"):
            decode_image_bytes(b"", "x", MB, 10_000)

    def test_byte_limit(self) -> None:
        data = _encode(_gradient(), "PNG")
        with pytest.raises(ImageTooLargeError, match=f"{len(data)} bytes"):
            decode_image_bytes(data, "x", len(data) - 1, 10_000)

    def test_pixel_limit_is_checked_before_decoding(self) -> None:
        # 5000 x 5000 pixels claimed in 70 bytes: refused from the header alone.
        bomb = _png_header_only(5000, 5000)
        assert len(bomb) < 100
        with pytest.raises(ImageTooLargeError, match="5000x5000 pixels is over the limit"):
            decode_image_bytes(bomb, "bomb.png", MB, 4_000_000)

    def test_pil_bomb_guard_becomes_too_large(self) -> None:
        with pytest.raises(ImageTooLargeError, match="bomb.png"):
            decode_image_bytes(_png_header_only(100_000, 100_000), "bomb.png", MB, 10**12)


class TestStore:
    def test_lru_eviction_spares_pinned_and_reports(self) -> None:
        evicted: list[str] = []
        store = ImageStore(max_images=2, on_evict=evicted.append)
        image = torch.rand(3, 4, 5)
        pinned = store.add(image, "sample.jpg", pinned=True, image_id="sample-0")
        a, b = store.add(image, "a.png"), store.add(image, "b.png")
        store.get(a.id)  # a is now more recent than b
        c = store.add(image, "c.png")
        assert evicted == [b.id]
        assert pinned.id in store and a.id in store and c.id in store and b.id not in store
        later = store.add(image, "sample2.jpg", pinned=True, image_id="sample-1")
        store.get(pinned.id)  # use does not reorder the pinned samples
        assert [p.id for p in store.pinned()] == [pinned.id, later.id]
        with pytest.raises(UnknownImageError, match="unknown id"):
            store.get(b.id)

    def test_total_pixel_cap(self) -> None:
        evicted: list[str] = []
        store = ImageStore(max_images=10, max_total_pixels=250, on_evict=evicted.append)
        first = store.add(torch.zeros(3, 10, 10, dtype=torch.uint8), "a.png")
        second = store.add(torch.zeros(3, 10, 10, dtype=torch.uint8), "b.png")
        assert evicted == []
        third = store.add(torch.zeros(3, 10, 10, dtype=torch.uint8), "c.png")  # 300 > 250
        assert evicted == [first.id] and second.id in store and third.id in store
        huge = store.add(torch.zeros(3, 20, 20, dtype=torch.uint8), "d.png")  # kept alone
        assert evicted == [first.id, second.id, third.id] and huge.id in store

    def test_float_images_are_kept_exactly(self) -> None:
        from semcorr.io import load_image
        from semcorr.samples import load_samples

        image = load_image(load_samples().source)
        stored = ImageStore().add(image, "chelsea.jpg", pinned=True)
        assert stored.pixels.dtype == torch.uint8
        assert torch.equal(stored.image, image)

    def test_ids_are_random_and_names_are_display_only(self) -> None:
        store = ImageStore()
        image = torch.rand(3, 4, 5)
        first = store.add(image, "../../etc/passwd")
        second = store.add(image, "C:\\x\\<b>.png")
        assert first.id != second.id and len(first.id) == 16
        assert first.name == "passwd" and second.name == "b.png"
        assert (first.width, first.height) == (5, 4)
        assert Image.open(io.BytesIO(first.png)).size == (5, 4)
