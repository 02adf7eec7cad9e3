"""R2D2's training data in its released layout: listing, flow decoding, checks and download."""

from __future__ import annotations

import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semcorr.data.prepare import check_dataset, prepare
from semcorr.data.r2d2_training import (
    aachen_db_images,
    check_r2d2_training,
    optical_flow_pairs,
    read_flow,
    read_mask,
    style_transfer_pairs,
    web_images,
)
from semcorr.errors import InputError
from shared_data import shared_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from r2d2_fixtures import FLOW_SHIFT, write_wasf  # noqa: E402


@pytest.fixture
def wasf(tmp_path: Path) -> Path:
    return write_wasf(tmp_path / "data", shared_path("r2d2"))


def test_web_images_from_lists_and_folders(wasf: Path) -> None:
    paths = web_images(wasf, range(0, 2))
    names = [p.name for p in paths]
    assert names == ["00000000.jpg", "00000001.jpg", "00000002.jpg", "00400003.jpg"]
    assert all(p.is_file() and p.parent.name == p.name[:3] for p in paths)
    assert len(web_images(wasf, range(0, 1))) == 3  # list 0 is read from its file


def test_aachen_sources(wasf: Path) -> None:
    assert list(aachen_db_images(wasf)) == ["1001", "1002", "2001", "2002"]
    pairs = style_transfer_pairs(wasf)
    assert [(a.stem, b.name) for a, b in pairs] == [("1001", "1001.jpg.st_night.jpg"),
                                                   ("2001", "2001.jpg.st_night.jpg")]
    flows = optical_flow_pairs(wasf)
    assert [(f.image1.stem, f.image2.stem) for f in flows] == [("2001", "2002"),
                                                              ("2002", "2001")]


def test_flow_files_decode_to_the_known_shift(wasf: Path) -> None:
    dx, dy = FLOW_SHIFT
    png, raw = optical_flow_pairs(wasf)
    flow = read_flow(png.flow)
    assert flow.shape == (200, 240, 2) and flow.dtype == np.float32
    assert np.array_equal(flow[..., 0], np.full((200, 240), -dx, np.float32))
    assert np.array_equal(flow[..., 1], np.full((200, 240), -dy, np.float32))
    assert np.array_equal(read_flow(raw.flow), -flow)  # the PNG is broken: the raw file
    mask = read_mask(png.mask)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert int(mask.sum()) == (240 - dx) * (200 - abs(dy))
    # the flow is right: pixels of image 1 reappear where it says in image 2
    one = np.asarray(Image.open(png.image1), np.float64)
    two = np.asarray(Image.open(png.image2), np.float64)
    ys, xs = np.nonzero(mask)
    right = np.abs(one[ys, xs] - two[ys - dy, xs - dx]).mean()
    wrong = np.abs(one[ys, xs] - two[np.clip(ys + 3, 0, 199), xs]).mean()
    assert right < 3 < wrong


def test_bad_layouts_name_the_file(wasf: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="revisitop1m: no such folder"):
        web_images(tmp_path / "nothing")
    (wasf / "aachen" / "optical_flow" / "mask" / "2001_2002.png").unlink()
    with pytest.raises(InputError, match="flow/ and mask/ differ .*2001_2002.png"):
        optical_flow_pairs(wasf)
    bad = wasf / "aachen" / "optical_flow" / "flow" / "2002_2001"
    bad.write_bytes(b"\0" * 16)
    with pytest.raises(InputError, match="not a flow file"):
        read_flow(bad.with_suffix(".png"))


def test_check_lists_what_is_missing(wasf: Path, tmp_path: Path) -> None:
    missing = check_r2d2_training(wasf)
    assert len(missing) == 50 and missing[0].startswith("revisitop1m/008/ .. 00b/")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(check_r2d2_training(empty)) == 52 + 4
    assert check_dataset("r2d2-training", empty)[-1] == "aachen/optical_flow/mask/*.png"


def _archives(wasf: Path, mirror: Path) -> None:
    """The released archives, small: tarballs of web folders, zips of the Aachen folders."""
    mirror.mkdir()
    for i in range(1, 6):
        with tarfile.open(mirror / f"revisitop1m.{i}.tar.gz", "w:gz") as tar:
            folder = f"{0xd0 + i:03x}"
            source = wasf / "revisitop1m" / "000"
            for k, image in enumerate(sorted(source.iterdir())):
                tar.add(image, f"{folder}/{folder}{k:05d}.jpg")
    for name in ("style_transfer", "optical_flow"):
        with zipfile.ZipFile(mirror / f"aachen_{name}.zip", "w") as archive:
            for path in sorted((wasf / "aachen" / name).rglob("*")):
                archive.write(path, path.relative_to(wasf / "aachen"))


def test_prepare_downloads_unpacks_and_resumes(wasf: Path, tmp_path: Path) -> None:
    _archives(wasf, tmp_path / "mirror")
    root = tmp_path / "root"
    mirror = (tmp_path / "mirror").as_uri()
    report = prepare("r2d2-training", root, mirror=mirror, progress=False)
    assert len(report["downloaded"]) == 7
    assert (root / "revisitop1m" / "0d3" / "0d300001.jpg").is_file()
    assert (root / "aachen" / "style_transfer" / "1001.jpg.st_night.jpg").is_file()
    assert (root / "aachen" / "optical_flow" / "flow" / "2001_2002.png").is_file()
    assert not report["complete"] and "visuallocalization" in report["manual"]
    assert "aachen/images_upright/db/*.jpg" in report["missing"]
    shutil.copytree(wasf / "aachen" / "images_upright", root / "aachen" / "images_upright")
    again = prepare("r2d2-training", root, mirror=mirror, progress=False)
    assert again["downloaded"] == []  # what is unpacked is not fetched again
    assert np.array_equal(read_flow(root / "aachen/optical_flow/flow/2001_2002.png"),
                          read_flow(wasf / "aachen/optical_flow/flow/2001_2002.png"))
