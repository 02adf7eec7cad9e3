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


def _bomb_png(path: Path, side: int) -> Path:
    """A small file that decodes to ``side`` × ``side`` pixels (a 1-bit PNG of zeros)."""
    Image.new("1", (side, side)).save(path, optimize=True)
    return path


def test_pixel_cap_from_the_header_default_50mp(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    big = _bomb_png(tmp_path / "big.png", 8000)  # 64 MP in a few kB
    assert big.stat().st_size < 100_000
    with pytest.raises(ImageError, match="big.png: 8000x8000 pixels is over the limit of "
                                         "50000000"):
        load_image(big)
    monkeypatch.setenv("SEMCORR_MAX_PIXELS", "1000")
    with pytest.raises(ImageError, match="over the limit of 1000"):
        load_image(_bomb_png(tmp_path / "small.png", 40))
    monkeypatch.setenv("SEMCORR_MAX_PIXELS", "lots")
    with pytest.raises(ImageError, match="SEMCORR_MAX_PIXELS='lots'"):
        load_image(tmp_path / "small.png")


def test_pil_bomb_warning_inside_open_is_a_refusal(tmp_path: Path) -> None:
    """PIL warns from inside ``Image.open`` above its own MAX_IMAGE_PIXELS (89 MP): that must be
    a clear refusal too, whatever cap the caller set (here none)."""
    import warnings

    huge = _bomb_png(tmp_path / "huge.png", 10000)  # 100 MP: PIL's warning zone
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning escaping would fail the test
        with pytest.raises(ImageError, match="huge.png: refused as a possible decompression"):
            load_image(huge, max_pixels=10**9)


def test_dataset_header_reader_refuses_bombs(tmp_path: Path) -> None:
    from semcorr.data.base import image_size

    with pytest.raises(ImageError, match="over the limit"):
        image_size(_bomb_png(tmp_path / "big.png", 8000))
    assert image_size(_bomb_png(tmp_path / "ok.png", 30)) == (30, 30)


def test_sixteen_bit_png_scaled_by_its_range(tmp_path: Path) -> None:
    import numpy as np

    values = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16).repeat(2, axis=0)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")  # really stored as 16-bit grey
    loaded = load_image(path)
    expected = torch.tensor([0, 16384, 32768, 65535]) / 65535
    torch.testing.assert_close(loaded[0, 0], expected, atol=1 / 255, rtol=0)
    assert torch.equal(loaded[0], loaded[2])  # grey → three equal channels


def test_float_tiff_scaled_by_its_range(tmp_path: Path) -> None:
    import numpy as np

    unit = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    Image.fromarray(unit, mode="F").save(tmp_path / "unit.tif")
    torch.testing.assert_close(load_image(tmp_path / "unit.tif")[1, 0],
                               torch.tensor([0.0, 0.25, 0.5, 1.0]), atol=1 / 255, rtol=0)
    wide = np.array([[-10.0, 0.0, 10.0, np.nan]], dtype=np.float32)  # real range -10..10
    Image.fromarray(wide, mode="F").save(tmp_path / "wide.tif")
    torch.testing.assert_close(load_image(tmp_path / "wide.tif")[0, 0],
                               torch.tensor([0.0, 0.5, 1.0, 0.0]), atol=1 / 255, rtol=0)


def test_long_inline_points_are_not_taken_for_a_file_name() -> None:
    from semcorr.io import parse_points

    text = ";".join(f"{i}.5,{i}.25" for i in range(60))  # > 255 characters
    assert len(text) > 255
    points = parse_points(text)
    assert points.shape == (60, 2) and points[59].tolist() == [59.5, 59.25]
