"""`semcorr show features`, `semcorr analyze pose-awareness`, `semcorr data prepare`."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semcorr.cli.main import JOBS, main

sys.path.insert(0, str(Path(__file__).parents[1] / "analysis"))
from test_pose_awareness import make_left_right  # noqa: E402


def test_jobs_are_registered() -> None:
    assert {"show", "analyze", "data"} <= set(JOBS)


def test_show_features(photo_paths: list[Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "pca"
    code = main(["show", "features", str(photo_paths[0]), str(photo_paths[1]), "--out", str(out),
                 "--side-by-side"])
    assert code == 0
    written = sorted(out.glob("*.png"))
    assert [p.name for p in written] == ["00_boat_pca.png", "01_peppers_pca.png"]
    with Image.open(photo_paths[0]) as photo, Image.open(written[0]) as picture:
        assert picture.size == (2 * photo.width, photo.height)
    assert "wrote" in capsys.readouterr().out


def test_show_features_foreground(photo_paths: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "fg"
    assert main(["show", "features", str(photo_paths[0]), "--out", str(out),
                 "--foreground-threshold", "0.5"]) == 0
    with Image.open(next(out.glob("*.png"))) as picture:
        pixels = np.asarray(picture.convert("RGB")).reshape(-1, 3)
    black = int((pixels == 0).all(axis=1).sum())
    assert 0 < black < len(pixels)  # masked, but not everything


def test_show_bad_image(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    assert main(["show", "features", str(bad), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("semcorr: error:") and "broken.jpg" in err and "Traceback" not in err


def test_analyze_pose_awareness(photo_paths: list[Path], tmp_path: Path, capsys) -> None:
    templates, images = make_left_right(tmp_path / "poses", photo_paths[0])
    out = tmp_path / "report"
    code = main(["analyze", "pose-awareness", "--templates", str(templates), "--images",
                 str(images), "--grid", "32", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "| left | 2 | 0 | 100.0 |" in text and "dense-sift separates the poses" in text
    saved = json.loads((out / "pose_awareness.json").read_text())
    assert saved["accuracy"] == 1.0 and saved["confusion"] == [[2, 0], [0, 2]]


def test_analyze_missing_folder(tmp_path: Path, capsys) -> None:
    assert main(["analyze", "pose-awareness", "--templates", str(tmp_path / "none"),
                 "--images", str(tmp_path)]) == 2
    assert "none: --templates folder not found" in capsys.readouterr().err


def test_data_prepare_verifies_real_pf_willow(pf_willow_root: Path, capsys) -> None:
    assert main(["data", "prepare", "pf-willow", "--root", str(pf_willow_root)]) == 0
    assert "is complete" in capsys.readouterr().out


def test_data_prepare_names_the_removed_file(pf_willow_root: Path, tmp_path: Path,
                                             capsys) -> None:
    root = tmp_path / "pf-willow"
    shutil.copytree(pf_willow_root, root)
    removed = sorted(p.name for p in (pf_willow_root / "motorbike(M)").glob("*.png"))[0]
    (root / "motorbike(M)" / removed).unlink()
    assert main(["data", "prepare", "pf-willow", "--root", str(root), "--verify-only"]) == 2
    captured = capsys.readouterr()
    assert f"missing motorbike(M)/{removed}" in captured.out
    assert captured.err.strip() == (f"semcorr: error: pf-willow: {root} is incomplete (1 item(s) "
                                    "missing, listed above)")


def test_data_prepare_failed_download_lists_missing(tmp_path: Path, capsys) -> None:
    code = main(["data", "prepare", "pf-willow", "--root", str(tmp_path / "w"), "--quiet",
                 "--mirror", "http://127.0.0.1:9"])
    captured = capsys.readouterr()
    assert code == 1  # a failure during the work, not bad input
    assert "missing car(G)/" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("semcorr: error:") and "cannot connect" in err[0]


@pytest.mark.parametrize("name", ["spair", "pf-pascal", "ap10k", "cub"])
def test_data_prepare_verify_only_empty(name: str, tmp_path: Path, capsys) -> None:
    assert main(["data", "prepare", name, "--root", str(tmp_path), "--verify-only"]) == 2
    assert "missing" in capsys.readouterr().out


def test_data_prepare_verify_only_opens_every_file(pf_willow_root: Path, tmp_path: Path,
                                                   capsys) -> None:
    """Present is not enough: a zero-byte image and a garbage .mat make the dataset incomplete,
    each named with its reason (the check used to look at file names only)."""
    root = tmp_path / "pf-willow"
    shutil.copytree(pf_willow_root, root)
    png = sorted((root / "car(G)").glob("*.png"))[0]
    mat = sorted((root / "duck(S)").glob("*.mat"))[0]
    png.write_bytes(b"")
    mat.write_bytes(b"MATLAB 5.0 garbage" * 3)
    assert main(["data", "prepare", "pf-willow", "--root", str(root), "--verify-only"]) == 2
    out = capsys.readouterr().out
    assert f"missing car(G)/{png.name}: not a readable image" in out
    assert f"missing duck(S)/{mat.name}: unreadable" in out
    assert "2 item(s) missing" in out
