"""PF-PASCAL loader on a tiny dataset in the official layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from semcorr.data import create_dataset
from semcorr.errors import InputError


def test_test_pairs_from_csv(pfpascal_root: Path) -> None:
    ds = create_dataset("pf-pascal", pfpascal_root, split="test")
    assert len(ds) == 2
    first = ds[0]
    assert first.category == "cat"
    assert first.source_path == pfpascal_root / "JPEGImages/2009_000001.jpg"
    assert first.source_points.tolist() == [[5.0, 6.0], [10.0, 12.0]]
    assert first.target_points.tolist() == [[7.0, 8.0], [12.0, 14.0]]
    assert first.visible.all()
    assert first.target_size == (44, 60)
    assert first.pck_reference == 60.0  # larger side of the target image
    assert first.target_bbox.tolist() == [2.0, 3.0, 40.0, 50.0]
    assert (first.flip_permutation == -1).all()
    assert ds.protocol["normalisation"] == "image"
    assert len(ds[1].source_points) == 3


def test_bbox_normalisation(pfpascal_root: Path) -> None:
    ds = create_dataset("pf-pascal", pfpascal_root, normalisation="bbox")
    assert ds[0].pck_reference == 47.0  # max(40 - 2, 50 - 3)
    assert ds.protocol["normalisation"] == "bbox"


def test_train_pairs_from_mat(pfpascal_root: Path) -> None:
    ds = create_dataset("pf-pascal", pfpascal_root, split="train")
    sample = ds[0]
    assert sample.visible.tolist() == [True, True, False]  # NaN row in the target .mat
    assert sample.target_points[2].tolist() == [-1.0, -1.0]
    assert sample.extra == {"flip": 1}


def test_val_category_and_paths(pfpascal_root: Path) -> None:
    assert len(create_dataset("pf-pascal", pfpascal_root, split="val")) == 1
    assert len(create_dataset("pf-pascal", pfpascal_root, category="dog")) == 0
    names = [p.name for p in create_dataset("pf-pascal", pfpascal_root).image_paths()]
    assert names == ["2009_000001.jpg", "2009_000002.jpg", "2009_000003.jpg"]


def test_bad_layouts(pfpascal_root: Path) -> None:
    (pfpascal_root / "val_pairs_pf_pascal.csv").unlink()
    with pytest.raises(InputError, match=r"val_pairs_pf_pascal\.csv: missing pair list"):
        create_dataset("pf-pascal", pfpascal_root, split="val")
    (pfpascal_root / "test_pairs_pf_pascal.csv").write_text("source_image,target_image\na,b\n")
    with pytest.raises(InputError, match="missing column"):
        create_dataset("pf-pascal", pfpascal_root)
