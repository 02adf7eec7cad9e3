"""SPair-71k loader on a tiny dataset in the official layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semcorr.data import PairSample, create_dataset, list_datasets
from semcorr.errors import InputError


def test_registered() -> None:
    assert {"spair", "pf-pascal", "pf-willow", "ap10k", "cub"} <= set(list_datasets())


def test_pairs_and_fields(spair_root: Path) -> None:
    ds = create_dataset("spair", spair_root, split="test")
    assert len(ds) == 2
    sample = ds[0]
    assert isinstance(sample, PairSample)
    assert sample.pair_id == "000001-2008_000001-2008_000002:cat"
    assert sample.source_path == spair_root / "JPEGImages/cat/2008_000001.jpg"
    assert sample.category == "cat"
    assert sample.source_points.shape == (15, 2)
    assert sample.source_points[2].tolist() == [10.0, 4.0]
    assert sample.target_points[10].tolist() == [12.0, 22.0]
    assert sample.source_points[10].tolist() == [-1.0, -1.0]  # not annotated in the source
    assert sample.visible.nonzero().flatten().tolist() == [0, 2, 3, 9]
    assert sample.source_size == (40, 30) and sample.target_size == (36, 32)
    assert sample.target_bbox.tolist() == [1.0, 1.0, 35.0, 21.0]
    assert sample.pck_reference == 34.0  # max(35 - 1, 21 - 1): the target bbox
    assert sample.keypoint_ids.tolist() == list(range(15))
    assert sample.extra["viewpoint_variation"] == 1 and sample.extra["occlusion"] == 1


def test_flip_permutation_is_an_involution(spair_root: Path) -> None:
    sample = create_dataset("spair", spair_root)[0]
    perm = sample.flip_permutation
    assert perm[2] == 3 and perm[3] == 2 and perm[9] == 10 and perm[8] == -1
    has = perm >= 0
    assert torch.equal(perm[perm[has]], torch.arange(15)[has])


def test_geometry_aware_subset(spair_root: Path) -> None:
    ds = create_dataset("spair", spair_root)
    # pair 1: ears (2, 3) both in the target -> both geo-aware; paw 9 with 10 in target -> yes
    first = ds[0].geometry_aware().nonzero().flatten().tolist()
    assert first == [2, 3, 9]
    # pair 2: target has ear 2 only -> ear 2 is not geometry-aware; 0 has no group
    assert ds[1].geometry_aware().nonzero().flatten().tolist() == []


def test_splits_layouts_and_category(spair_root: Path) -> None:
    assert len(create_dataset("spair", spair_root, split="trn")) == 1
    assert len(create_dataset("spair", spair_root, split="train")) == 1
    assert len(create_dataset("spair", spair_root, layout="small")) == 2
    assert len(create_dataset("spair", spair_root, category="dog")) == 0
    assert len(create_dataset("spair", spair_root, split="val")) == 0


def test_image_paths_are_unique(spair_root: Path) -> None:
    paths = create_dataset("spair", spair_root).image_paths()
    assert [p.name for p in paths] == ["2008_000001.jpg", "2008_000002.jpg", "2008_000003.jpg"]
    assert all(p.is_file() for p in paths)


def test_missing_layout_file_is_named(spair_root: Path) -> None:
    (spair_root / "Layout/large/test.txt").unlink()
    with pytest.raises(InputError, match=r"Layout/large/test\.txt: missing pair list"):
        create_dataset("spair", spair_root)


def test_missing_pair_annotation_is_named(spair_root: Path) -> None:
    (spair_root / "PairAnnotation/test/000002-2008_000002-2008_000003:cat.json").unlink()
    with pytest.raises(InputError, match="000002-2008_000002-2008_000003:cat.json"):
        create_dataset("spair", spair_root)


def test_missing_image_annotation_is_named(spair_root: Path) -> None:
    (spair_root / "ImageAnnotation/cat/2008_000003.json").unlink()
    ds = create_dataset("spair", spair_root)
    ds[0]
    with pytest.raises(InputError, match=r"2008_000003\.json: missing annotation file"):
        ds[1]


def test_missing_folder_and_bad_split(tmp_path: Path, spair_root: Path) -> None:
    with pytest.raises(InputError, match="missing SPair-71k folder"):
        create_dataset("spair", tmp_path / "nowhere")
    with pytest.raises(InputError, match="split"):
        create_dataset("spair", spair_root, split="dev")
    with pytest.raises(InputError, match="unexpected keyword"):
        create_dataset("spair", spair_root, colour="red")


def test_evaluate_with_pose_alignment(spair_root: Path, tmp_path: Path) -> None:
    """End to end on the tiny SPair: flip permutations reach the Matcher, geo column filled."""
    from semcorr import Matcher, create_backbone
    from semcorr.eval.benchmark import evaluate

    matcher = Matcher(create_backbone("dense-sift", image_size=64), pose_align=True)
    results = evaluate(matcher, create_dataset("spair", spair_root), tmp_path, plot=False,
                       progress=False)  # fmt: skip
    assert results["pairs"] == 2 and results["skipped"] == 0
    assert results["protocol"]["normalisation"] == "bbox"
    assert results["counts"]["all"]["keypoints"] == 4 + 2
    assert results["geo_aware"]["keypoints"] == 3
    assert results["config"]["matcher"]["poses"] == ["identity", "hflip"]
