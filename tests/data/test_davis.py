"""The DAVIS-2017 loader and `semcorr data prepare davis2017` on a tiny fixture in the official
layout (JPEGImages/480p, Annotations/480p in the DAVIS palette, ImageSets/2017)."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semcorr.data.davis import check_davis2017
from semcorr.data.prepare import prepare
from semcorr.data.video import DAVIS_VOID, create_video_dataset, davis_palette
from semcorr.errors import InputError
from video_fixtures import band_mask, photo, write_davis


def _fixture(root: Path) -> Path:
    frame = photo()
    void = band_mask()
    void[:, 64:68] = DAVIS_VOID  # a void strip next to object 1, as DAVIS marks borders
    write_davis(root, {"bear": ([frame] * 3, [void, band_mask(), band_mask(0, 8)]),
                       "car": ([frame] * 2, [band_mask()] * 2)})
    (root / "ImageSets" / "2017" / "train.txt").write_text("car\n")
    return root


def test_loader_reads_sequences_masks_and_void(tmp_path):
    dataset = create_video_dataset("davis2017", _fixture(tmp_path))
    assert (dataset.split, len(dataset), dataset.kind) == ("val", 2, "masks")
    bear = dataset[0]
    assert bear.name == "bear" and [p.name for p in bear.frames] == [
        "00000.jpg", "00001.jpg", "00002.jpg"]
    masks = bear.read_masks()
    assert masks.shape == (3, 128, 128) and masks.dtype == np.int64
    assert (masks[0, :, 64:68] == 0).all()  # void is background, as the evaluation reads it
    assert np.unique(masks[2]).tolist() == [0, 1, 2] and (masks[2] == 2).sum() == 24 * 128
    np.testing.assert_array_equal(bear.first_labels()[:, :64], 1)
    train = create_video_dataset("davis2017", tmp_path, split="train")
    assert [s.name for s in train] == ["car"]
    assert [s.name for s in create_video_dataset("davis2017", tmp_path,
                                                 sequences="car")] == ["car"]


def test_annotations_are_written_in_the_davis_palette(tmp_path):
    _fixture(tmp_path)
    image = Image.open(tmp_path / "Annotations" / "480p" / "car" / "00000.png")
    assert image.mode == "P"
    palette = np.asarray(image.getpalette()[:12]).reshape(4, 3).tolist()
    # davis2017-evaluation utils.py color_map: the PASCAL VOC colours
    assert palette == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert davis_palette()[255].tolist() == [224, 224, 192]


def test_bad_layouts_are_named(tmp_path):
    root = _fixture(tmp_path)
    with pytest.raises(InputError, match="unknown split"):
        create_video_dataset("davis2017", root, split="test-dev")
    with pytest.raises(InputError, match=r"\['zebra'\]"):
        create_video_dataset("davis2017", root, sequences="zebra")
    (root / "Annotations" / "480p" / "bear" / "00002.png").unlink()
    with pytest.raises(InputError, match="do not name the 3 frames"):
        create_video_dataset("davis2017", root)
    Image.new("RGB", (4, 4)).save(root / "Annotations" / "480p" / "bear" / "00002.png")
    with pytest.raises(InputError, match="index PNG"):
        create_video_dataset("davis2017", root)[0].read_masks()
    assert check_davis2017(root) == []
    shutil.rmtree(root / "JPEGImages" / "480p" / "car")
    assert check_davis2017(root) == ["JPEGImages/480p/car/"]


def test_prepare_downloads_and_unpacks_the_official_archive(tmp_path):
    """The archive, served from a file:// mirror, holds a top folder DAVIS/ (stripped)."""
    source = _fixture(tmp_path / "src" / "DAVIS")
    archive = tmp_path / "mirror" / "DAVIS-2017-trainval-480p.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(source.parent))
    root = tmp_path / "davis"
    report = prepare("davis2017", root, mirror=archive.parent.as_uri(), progress=False)
    assert report["complete"], report["missing"]
    assert report["downloaded"] == ["DAVIS-2017-trainval-480p.zip"]
    assert len(create_video_dataset("davis2017", root)) == 2
    again = prepare("davis2017", root, mirror=archive.parent.as_uri(), progress=False)
    assert again["complete"] and again["downloaded"] == []
