"""CUB-200-2011 keypoint loader on a tiny dataset in the official layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from semcorr.data import create_dataset
from semcorr.errors import InputError


def test_drawn_pairs_are_within_class_and_deterministic(cub_root: Path) -> None:
    ds = create_dataset("cub", cub_root, split="test")
    again = create_dataset("cub", cub_root, split="test")
    # test images: 2, 3 (class 1) and 5, 6 (class 2) -> 2 ordered pairs per class
    assert len(ds) == 4
    ids = [ds[i].pair_id for i in range(len(ds))]
    assert ids == [again[i].pair_id for i in range(len(again))]
    assert set(ids) == {"2-3", "3-2", "5-6", "6-5"}
    assert len(create_dataset("cub", cub_root, pairs_per_class=1)) == 2


def test_fields(cub_root: Path) -> None:
    ds = create_dataset("cub", cub_root)
    sample = next(s for s in ds if s.pair_id == "3-2")
    assert sample.category == "001.Black_footed_Albatross"
    assert sample.source_points.shape == (15, 2)
    # image 3 (odd) has parts 11-15 invisible; image 2 sees all
    assert sample.visible.tolist() == [True] * 10 + [False] * 5
    assert sample.target_visible.all()
    assert sample.target_bbox.tolist() == [2.0, 3.0, 24.0, 18.0]
    assert sample.pck_reference == 22.0
    assert sample.flip_permutation[6] == 10 and sample.flip_permutation[10] == 6
    # left eye (6) visible in both, right eye (10) in the target -> geometry-aware
    assert sample.geometry_aware().nonzero().flatten().tolist() == [6, 7, 8]


def test_pairs_file_and_errors(cub_root: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1 4\n4 1\n")
    ds = create_dataset("cub", cub_root, pairs=pairs)
    assert [ds[0].pair_id, ds[1].pair_id] == ["1-4", "4-1"]
    pairs.write_text("1 99\n")
    with pytest.raises(InputError, match="unknown image id"):
        create_dataset("cub", cub_root, pairs=pairs)
    (cub_root / "parts" / "part_locs.txt").unlink()
    with pytest.raises(InputError, match=r"part_locs\.txt: missing file"):
        create_dataset("cub", cub_root)
