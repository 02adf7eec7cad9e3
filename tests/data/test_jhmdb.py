"""The JHMDB loader (the CRW / DIFT protocol's split and 0-based joints) and `semcorr data
prepare jhmdb` on a tiny fixture in the official layout (Rename_Images, joint_positions .mat,
splits/*_test_split1.txt)."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from semcorr.data.jhmdb import check_jhmdb
from semcorr.data.prepare import prepare
from semcorr.data.video import create_video_dataset
from semcorr.errors import InputError
from video_fixtures import JOINTS, photo, write_jhmdb


def _fixture(root: Path) -> Path:
    frame = photo()
    still = np.repeat(JOINTS[None], 3, axis=0)
    moving = still + np.arange(3)[:, None, None] * np.array([2.0, -1.0])
    return write_jhmdb(root, {("wave", "a"): ([frame] * 3, still, "2"),
                              ("wave", "b"): ([frame] * 4, moving, "2"),  # 4 frames, 3 poses
                              ("clap", "c"): ([frame] * 2, still[:2], "1"),
                              ("clap", "d"): ([frame] * 3, moving, "2")})


def test_loader_keeps_the_test_split_and_makes_joints_zero_based(tmp_path):
    dataset = create_video_dataset("jhmdb", _fixture(tmp_path))
    assert (dataset.split, dataset.kind) == ("test", "points")
    assert [s.name for s in dataset] == ["clap/d", "wave/a", "wave/b"]  # flag 2 only
    moving = dataset[2]
    assert moving.category == "wave" and len(moving.frames) == 3  # frames with a pose
    assert moving.points.shape == (3, 15, 2)
    # pos_img is 1-based (MATLAB); the loader subtracts 1 as CRW does: back to JOINTS
    np.testing.assert_allclose(moving.points[0].numpy(), JOINTS)
    np.testing.assert_allclose(moving.points[2].numpy(), JOINTS + [4.0, -2.0])
    train = create_video_dataset("jhmdb", tmp_path, split="train")
    assert [s.name for s in train] == ["clap/c"]


def test_a_crw_file_list_replaces_the_split_files(tmp_path):
    root = _fixture(tmp_path)
    listing = tmp_path / "jhmdb_test.txt"
    listing.write_text("Rename_Images/wave/b joint_positions/wave/b/joint_positions.mat\n"
                       f"{root}/Rename_Images/clap/c {root}/joint_positions/clap/c/"
                       "joint_positions.mat\n")
    dataset = create_video_dataset("jhmdb", root, filelist=str(listing))
    assert [s.name for s in dataset] == ["wave/b", "clap/c"]
    listing.write_text("Rename_Images/wave/b\n")
    with pytest.raises(InputError, match="jhmdb_test.txt:1"):
        create_video_dataset("jhmdb", root, filelist=str(listing))


def test_bad_annotations_are_named(tmp_path):
    root = _fixture(tmp_path)
    mat = root / "joint_positions" / "wave" / "a" / "joint_positions.mat"
    scipy.io.savemat(str(mat), {"pos_img": np.zeros((3, 15))})
    with pytest.raises(InputError, match=r"wave/a/joint_positions.mat.*2 x joints x frames"):
        create_video_dataset("jhmdb", root)
    mat.write_bytes(b"not a mat file")
    with pytest.raises(InputError, match="unreadable .mat"):
        create_video_dataset("jhmdb", root)
    with pytest.raises(InputError, match="unknown split"):
        create_video_dataset("jhmdb", root, split="val")


def test_prepare_fetches_the_three_official_archives(tmp_path):
    source = _fixture(tmp_path / "src")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(mirror / "Rename_Images.tar.gz", "w:gz") as tf:
        tf.add(source / "Rename_Images", arcname="Rename_Images")
    for name in ("joint_positions", "splits"):
        with zipfile.ZipFile(mirror / f"{name}.zip", "w") as zf:
            for path in sorted((source / name).rglob("*")):
                zf.write(path, path.relative_to(source))
    root = tmp_path / "jhmdb"
    report = prepare("jhmdb", root, mirror=mirror.as_uri(), progress=False)
    assert report["complete"], report["missing"]
    assert sorted(report["downloaded"]) == ["Rename_Images.tar.gz", "joint_positions.zip",
                                            "splits.zip"]
    assert len(create_video_dataset("jhmdb", root)) == 3
    (root / "joint_positions" / "wave" / "b" / "joint_positions.mat").unlink()
    assert check_jhmdb(root) == ["joint_positions/wave/b/joint_positions.mat"]
