"""The keypoints-json / COCO-keypoints loader (semcorr.data.keypoints_json): your own images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from semcorr.data import create_dataset, list_datasets
from semcorr.errors import ImageError, InputError


def _images(root: Path, names: list[str], size: tuple[int, int] = (40, 30)) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size).save(root / name)


def _simple(root: Path) -> Path:
    _images(root, ["mug/a.png", "mug/b.png", "mug/c.png", "cat/x.png", "cat/y.png"])
    data = {
        "categories": [
            {"name": "mug", "keypoints": ["handle", "rim_left", "rim_right"],
             "flip_pairs": [["rim_left", "rim_right"]]},
            {"name": "cat", "keypoints": ["nose"]},
        ],
        "images": [
            {"file": "mug/a.png", "category": "mug", "split": "trn", "bbox": [0, 0, 20, 10],
             "keypoints": {"handle": [1, 2], "rim_left": [3, 4], "rim_right": None}},
            {"file": "mug/b.png", "category": "mug", "split": "trn",
             "keypoints": {"handle": [5, 6], "rim_right": [7, 18]}},
            {"file": "mug/c.png", "category": "mug", "split": "test",
             "keypoints": {"rim_left": [1, 1]}},
            {"file": "cat/x.png", "category": "cat", "keypoints": {"nose": [10, 10]}},
            {"file": "cat/y.png", "category": "cat", "keypoints": {"nose": [12, 11]}},
        ],
    }
    (root / "annotations.json").write_text(json.dumps(data))
    return root


def test_registered() -> None:
    assert {"keypoints-json", "coco-keypoints"} <= set(list_datasets())


def test_pairs_within_category_and_split(tmp_path: Path) -> None:
    ds = create_dataset("keypoints-json", _simple(tmp_path), split="trn")
    ids = sorted(s.pair_id for s in ds)
    assert ids == ["cat:cat/x.png->cat/y.png", "cat:cat/y.png->cat/x.png",
                   "mug:mug/a.png->mug/b.png", "mug:mug/b.png->mug/a.png"]
    # mug/c.png is in 'test' only and shares no keypoint with a or b there: no mug pair
    assert [s.category for s in create_dataset("keypoints-json", tmp_path, split="test")] == [
        "cat", "cat"]


def test_sample_fields(tmp_path: Path) -> None:
    ds = create_dataset("keypoints-json", _simple(tmp_path), split="trn", category="mug")
    ab, ba = ds[0], ds[1]
    assert ab.visible.tolist() == [True, False, False]
    assert ab.source_points[1].tolist() == [3.0, 4.0]
    assert ab.target_points[1].tolist() == [-1.0, -1.0]
    assert ab.flip_permutation.tolist() == [-1, 2, 1]
    assert ab.source_size == (40, 30)
    # no target bbox: the larger side of the target's annotated keypoints' box (7-5, 18-6)
    assert ab.pck_reference == pytest.approx(12.0)
    assert ba.pck_reference == pytest.approx(20.0)  # bbox [0, 0, 20, 10]


def test_pairs_per_category(tmp_path: Path) -> None:
    root = _simple(tmp_path)
    one = create_dataset("keypoints-json", root, split="trn", pairs_per_category=1)
    again = create_dataset("keypoints-json", root, split="trn", pairs_per_category=1)
    assert len(one) == 2 and [s.pair_id for s in one] == [s.pair_id for s in again]


def test_coco_layout(tmp_path: Path) -> None:
    _images(tmp_path / "images", ["1.png", "2.png"])
    data = {
        "images": [{"id": 1, "file_name": "1.png", "split": "val"},
                   {"id": 2, "file_name": "2.png"}],
        "categories": [{"id": 7, "name": "person", "keypoints": ["nose", "eye"]}],
        "annotations": [
            {"image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 20],
             "keypoints": [5, 6, 2, 0, 0, 0]},
            {"image_id": 2, "category_id": 7, "bbox": [0, 0, 8, 8],
             "keypoints": [7.5, 1.5, 1, 3, 3, 2]},
        ],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    ds = create_dataset("coco-keypoints", tmp_path, split="val")
    assert len(ds) == 2
    sample = ds[0]
    assert sample.source_path == tmp_path / "images" / "1.png"
    assert sample.source_points.tolist() == [[4.5, 5.5], [-1.0, -1.0]]  # corner → centre frame
    assert sample.target_points[0].tolist() == [7.0, 1.0]
    assert torch.equal(sample.source_bbox, torch.tensor([1.5, 2.5, 11.5, 22.5]))
    assert sample.visible.tolist() == [True, False]
    assert ds[1].pck_reference == pytest.approx(20.0)
    assert len(create_dataset("coco-keypoints", tmp_path, split="trn")) == 0  # 1.png is val


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["images"][0].update(category="dog"), "unknown category 'dog'"),
        (lambda d: d["images"][0]["keypoints"].update(tail=[1, 1]), r"keypoints \['tail'\]"),
        (lambda d: d["images"][0]["keypoints"].update(handle=[1]), "handle: a keypoint is"),
        (lambda d: d.pop("images"), "expected an object"),
    ],
)
def test_errors_name_the_file(tmp_path: Path, change, message: str) -> None:  # noqa: ANN001
    root = _simple(tmp_path)
    data = json.loads((root / "annotations.json").read_text())
    change(data)
    (root / "annotations.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=message) as info:
        create_dataset("keypoints-json", root, split="trn")
    assert "annotations.json" in str(info.value)


def test_missing_folder_and_image(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing annotation folder"):
        create_dataset("keypoints-json", tmp_path / "nope")
    root = _simple(tmp_path)
    (root / "cat" / "y.png").unlink()
    ds = create_dataset("keypoints-json", root, split="trn", category="cat")
    with pytest.raises(ImageError, match="y.png"):
        ds[0]
