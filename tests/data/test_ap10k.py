"""AP-10K (GeoAware-SC benchmark layout) loader on a tiny dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from semcorr.data import create_dataset
from semcorr.errors import InputError


def test_intra_species(ap10k_root: Path) -> None:
    ds = create_dataset("ap10k", ap10k_root, split="test")
    assert len(ds) == 2
    sample = ds[0]
    assert sample.pair_id == "000000000001-000000000002:cat"
    assert sample.category == "cat"
    assert sample.source_path == ap10k_root / "JPEGImages/Felidae/cat/000000000001.jpg"
    assert sample.source_points.shape == (17, 2)
    assert sample.visible.nonzero().flatten().tolist() == [0, 1, 2, 5]
    assert sample.target_bbox.tolist() == [0.0, 0.0, 20.0, 34.0]  # from [left, top, w, h]
    assert sample.pck_reference == 34.0
    assert sample.target_size == (36, 36)
    assert sample.flip_permutation[5] == 8 and sample.flip_permutation[0] == 1


def test_geometry_aware(ap10k_root: Path) -> None:
    ds = create_dataset("ap10k", ap10k_root)
    # 1 -> 2: shoulders (5, 8): only 5 in the target -> not geo-aware
    assert ds[0].geometry_aware().sum() == 0
    # 2 -> 1: target has both shoulders, 5 visible in both -> geo-aware
    assert ds[1].geometry_aware().nonzero().flatten().tolist() == [5]


@pytest.mark.parametrize(
    ("subset", "category"), [("cross-species", "Felidae"), ("cross-family", "all")]
)
def test_cross_subsets(ap10k_root: Path, subset: str, category: str) -> None:
    ds = create_dataset("ap10k", ap10k_root, subset=subset)
    assert len(ds) == 1 and ds[0].category == category
    assert ds[0].extra["subset"] == subset
    assert all(p.is_file() for p in ds.image_paths())


def test_errors(ap10k_root: Path) -> None:
    with pytest.raises(InputError, match="subset"):
        create_dataset("ap10k", ap10k_root, subset="cross-planet")
    with pytest.raises(InputError, match=r"PairAnnotation/val: missing pair folder"):
        create_dataset("ap10k", ap10k_root, split="val")
    (ap10k_root / "ImageAnnotation/Felidae/cat/000000000002.json").unlink()
    with pytest.raises(InputError, match=r"000000000002\.json: missing annotation file"):
        create_dataset("ap10k", ap10k_root)[0]
