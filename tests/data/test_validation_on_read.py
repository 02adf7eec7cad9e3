"""Every dataset loader validates a pair on read (issue 19, item 3): shapes, finite visible
keypoints, visible source keypoints inside the source image (never clamped silently). A bad pair
raises :class:`BadPair` naming it; the other pairs still load; a reference length of 0 is a
reason to skip the pair (``sample_problem``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from semcorr.data import PairDataset, create_dataset
from semcorr.data.base import BadPair, PairSample, annotation_problem, sample_problem


def _index_of(ds: PairDataset, source: str) -> int:
    """The first pair whose source file is named ``source`` (read without validation)."""
    return next(i for i in range(len(ds)) if ds.sample(i).source_path.name == source)


def _refused(ds: PairDataset, index: int, reason: str) -> BadPair:
    with pytest.raises(BadPair) as caught:
        ds[index]
    assert reason in caught.value.reason, caught.value.reason
    return caught.value


def _edit_json(path: Path, change: dict) -> None:
    data = json.loads(path.read_text())
    for key, value in change.items():
        target = data
        *parents, last = key.split("/")
        for part in parents:
            target = target[part]
        target[last] = value
    path.write_text(json.dumps(data))


def test_spair(spair_root: Path) -> None:
    ann = spair_root / "ImageAnnotation" / "cat" / "2008_000001.json"
    pair = spair_root / "PairAnnotation" / "test" / "000001-2008_000001-2008_000002:cat.json"
    original_ann, original_pair = ann.read_text(), pair.read_text()
    _edit_json(ann, {"kps/0": [500.0, 6.0]})
    ds = create_dataset("spair", spair_root, "test")
    bad = _refused(ds, 0, "source keypoint 0 (500, 6) lies outside the 40x30 source image")
    assert bad.pair_id == "000001-2008_000001-2008_000002:cat"
    assert ds[1].pair_id.startswith("000002-")  # the other pair still loads
    _edit_json(ann, {"kps/0": [float("nan"), 6.0]})
    _refused(ds, 0, "source keypoint 0 is not a finite number")
    ann.write_text(original_ann)
    for change, reason in (({"src_bndbox": "abc"}, "malformed annotation"),
                           ({"trg_bndbox": [1.0, 2.0]}, "malformed annotation (IndexError"),
                           ({"trg_bndbox": [1, 2, 3, "x"]}, "malformed annotation"),
                           ({"src_bndbox": [1, 2, 3, 4, 5]}, "source bounding box must be 4"),
                           ({"src_imsize": [0, 30, 3]}, "source image size must be a positive"),
                           ({"src_imsize": "x"}, "malformed annotation")):
        pair.write_text(original_pair)
        _edit_json(pair, change)
        _refused(ds, 0, reason)
    pair.write_text(original_pair)
    _edit_json(pair, {"trg_bndbox": [1.0, 1.0, 1.0, 1.0]})  # a box of size 0
    assert annotation_problem(ds[0]) is None
    assert "PCK reference length is 0" in sample_problem(ds[0])


def test_pf_pascal(pfpascal_root: Path) -> None:
    csv = pfpascal_root / "test_pairs_pf_pascal.csv"
    original = csv.read_text()
    csv.write_text(original.replace(",8,5;10,", ",8,500;10,", 1))
    ds = create_dataset("pf-pascal", pfpascal_root, "test")
    _refused(ds, 0, "lies outside the 50x40 source image")
    assert ds[1].num_keypoints == 3
    csv.write_text(original.replace(",8,5;10,", ",8,nan;10,", 1))  # PF-PASCAL: NaN = absent
    ds = create_dataset("pf-pascal", pfpascal_root, "test")
    assert ds[0].visible.tolist()[0] is False
    csv.write_text(original)
    mat = pfpascal_root / "Annotations" / "cat" / "2009_000002.mat"  # pair 0's target
    data = scipy.io.loadmat(str(mat))
    scipy.io.savemat(str(mat), {"kps": data["kps"], "bbox": np.array([[2, 3, np.nan, 50.0]])})
    _refused(ds, 0, "target bounding box must be 4 finite numbers")


def test_pf_willow(willow_root: Path) -> None:
    mat = willow_root / "car(G)" / "img_000.mat"
    coords = scipy.io.loadmat(str(mat))["pts_coord"]
    changed = coords.copy()
    changed[0, 2] = 5000.0
    scipy.io.savemat(str(mat), {"pts_coord": changed})
    ds = create_dataset("pf-willow", willow_root)
    index = _index_of(ds, "img_000.png")
    _refused(ds, index, "source keypoint 2 (4999, ")
    changed[0, 2] = np.nan
    scipy.io.savemat(str(mat), {"pts_coord": changed})
    ds = create_dataset("pf-willow", willow_root)
    _refused(ds, index, "source keypoint 2 is not a finite number")
    scipy.io.savemat(str(mat), {"pts_coord": coords[:, :1]})  # one keypoint: reference 0
    ds = create_dataset("pf-willow", willow_root)
    target_one = next(i for i in range(len(ds)) if ds[i].target_path.name == "img_000.png")
    assert "PCK reference length is 0" in sample_problem(ds[target_one])


def test_ap10k(ap10k_root: Path) -> None:
    ann = next((ap10k_root / "ImageAnnotation").rglob("000000000001.json"))
    data = json.loads(ann.read_text())
    ds = create_dataset("ap10k", ap10k_root, "test")
    index = _index_of(ds, "000000000001.jpg")
    for value, reason in (([500, 5, 2], "source keypoint 0 (500, 5) lies outside the 40x30"),
                          ([float("nan"), 5, 2], "source keypoint 0 is not a finite number")):
        ann.write_text(json.dumps({**data, "keypoints": value + data["keypoints"][3:]}))
        _refused(ds, index, reason)
    ann.write_text(json.dumps({**data, "keypoints": [500, 5, 0] + data["keypoints"][3:]}))
    assert ds[index].visible[0].item() is False  # an absent keypoint may hold anything


def test_cub(cub_root: Path) -> None:
    ds = create_dataset("cub", cub_root, "test", pairs_per_class=2, min_common=1)
    source = int(ds[0].extra["source_id"])
    locs = cub_root / "parts" / "part_locs.txt"
    lines = locs.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if line.split()[:2] == [str(source), "1"])
    lines[row] = f"{source} 1 500.0 5.0 1"
    locs.write_text("\n".join(lines) + "\n")
    ds = create_dataset("cub", cub_root, "test", pairs_per_class=2, min_common=1)
    _refused(ds, 0, "source keypoint 0 (500, 5) lies outside the 40x30 source image")


def test_keypoints_json(tmp_path: Path) -> None:
    from PIL import Image

    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 30)).save(tmp_path / name)
    doc = {"categories": [{"name": "mug", "keypoints": ["handle", "rim"]}],
           "images": [{"file": "a.png", "category": "mug",
                       "keypoints": {"handle": [100, 2], "rim": [3, 4]}},
                      {"file": "b.png", "category": "mug",
                       "keypoints": {"handle": [5, 6], "rim": [7, 8]}}]}
    (tmp_path / "annotations.json").write_text(json.dumps(doc))
    ds = create_dataset("keypoints-json", tmp_path, split="test")
    _refused(ds, _index_of(ds, "a.png"), "source keypoint 0 (100, 2) lies outside the 40x30")
    assert ds[_index_of(ds, "b.png")].target_path.name == "a.png"  # as a target it may be
    doc["images"][0]["keypoints"]["handle"] = [float("nan"), 2]
    (tmp_path / "annotations.json").write_text(json.dumps(doc))
    ds = create_dataset("keypoints-json", tmp_path, split="test")
    _refused(ds, _index_of(ds, "a.png"), "source keypoint 0 is not a finite number")
    _refused(ds, _index_of(ds, "b.png"), "target keypoint 0 is not a finite number")


def test_shapes_checked() -> None:
    base = dict(source_path=Path("a.png"), target_path=Path("b.png"),
                source_points=torch.zeros(2, 2), target_points=torch.zeros(2, 2),
                visible=torch.ones(2, dtype=torch.bool), category="c", source_bbox=None,
                target_bbox=None, source_size=(10, 10), target_size=(10, 10),
                pck_reference=5.0, keypoint_ids=torch.arange(2),
                flip_permutation=torch.full((2,), -1), pair_id="p")
    assert annotation_problem(PairSample(**base)) is None
    for change, reason in (({"target_points": torch.zeros(3, 2)}, "keypoints must be (N, 2)"),
                           ({"source_points": torch.zeros(2, 3)}, "keypoints must be (N, 2)"),
                           ({"visible": torch.ones(3, dtype=torch.bool)}, "visible must have"),
                           ({"keypoint_ids": torch.arange(1)}, "keypoint_ids must have"),
                           ({"target_size": (10, 0)}, "target image size")):
        assert reason in annotation_problem(PairSample(**{**base, **change}))
