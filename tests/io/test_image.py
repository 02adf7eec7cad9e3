"""Image input: EXIF orientation, RGB, clear errors naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from semcorr.errors import ImageError
from semcorr.io import atomic_write_json, load_image


def test_exif_orientation_applied(tmp_path: Path) -> None:
    array = torch.zeros(20, 40, 3, dtype=torch.uint8)
    array[:, :10, 0] = 255  # red band on the left of the stored pixels
    image = Image.fromarray(array.numpy())
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    loaded = load_image(path)
    assert loaded.shape == (3, 40, 20)  # displayed upright: portrait
    assert loaded[0, :10].mean() > 0.8 and loaded[0, -10:].mean() < 0.2  # red on top


def test_grey_and_rgba_become_rgb(tmp_path: Path) -> None:
    for mode in ("L", "RGBA", "P"):
        path = tmp_path / f"img_{mode}.png"
        Image.new(mode, (8, 6)).save(path)
        assert load_image(path).shape == (3, 6, 8)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="nothing.png: no such image file"):
        load_image(tmp_path / "nothing.png")


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match="broken.jpg: not a readable image"):
        load_image(path)


def test_decompression_bomb_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(path)
    with pytest.raises(ImageError, match="big.png: 300x300 pixels is over the limit"):
        load_image(path, max_pixels=10_000)


def test_atomic_write_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.json"
    atomic_write_json(target, {"a": 1})
    assert target.read_text().strip().startswith("{")
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]
