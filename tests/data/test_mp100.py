"""MP-100 loader on a tiny copy of its official layout: POMNet episodes, MARCO's pair lists,
seen/unseen labels, and PCK by hand through semcorr's eval."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from identity_pairs import SIZE, identity_matcher, write_json, write_texture

from semcorr.data import create_dataset
from semcorr.data.mp100 import category_split, check_mp100
from semcorr.errors import InputError

#: Base keypoints (x, y); every image has the same pixels, so matching is the identity.
BASE = [(30.0, 30.0), (90.0, 30.0), (30.0, 90.0), (90.0, 90.0)]
CATEGORIES = {1: "cat_body", 2: "zebra_body"}  # seen (a SPair-71k class), unseen


def keypoints(category: int, obj: int) -> list[float]:
    """cat_body: the base points; zebra_body: points 2 and 3 move 20 px per object."""
    points = list(BASE)
    if category == 2:
        points[2] = (30.0 + 20 * obj, 90.0)
        points[3] = (90.0, 30.0 + 20 * obj)
    return [v for x, y in points for v in (x, y, 2)]


def write_mp100(root: Path, objects: int = 4, bbox: list[float] | None = None) -> Path:
    """``annotations/mp100_split{1..5}_test.json`` (split 1 holds both categories) and
    ``images/<category>/<n>.jpg``."""
    images, annotations = [], []
    for cat, name in CATEGORIES.items():
        for obj in range(objects):
            image_id = cat * 100 + obj
            file_name = f"{name}/{obj:03d}.jpg"
            write_texture(root / "images" / file_name, 0)
            images.append({"id": image_id, "file_name": file_name, "width": SIZE,
                           "height": SIZE})
            annotations.append({"id": image_id, "image_id": image_id, "category_id": cat,
                                "bbox": bbox or [10, 10, 101, 101], "area": 100.0,
                                "iscrowd": 0, "num_keypoints": 4,
                                "keypoints": keypoints(cat, obj)})
    categories = [{"id": c, "name": n, "keypoints": ["a", "b", "c", "d"]}
                  for c, n in CATEGORIES.items()]
    for k in range(1, 6):
        data = ({"images": images, "annotations": annotations, "categories": categories}
                if k == 1 else {"images": [], "annotations": [], "categories": []})
        write_json(root / "annotations" / f"mp100_split{k}_test.json", data)
    return root


@pytest.fixture
def mp100_root(tmp_path: Path) -> Path:
    return write_mp100(tmp_path / "mp100")


def episodes(root: Path, **options: object):
    return create_dataset("mp100", root, pairs="episodes", episodes=2, queries=3, **options)


def test_episodes_follow_pomnet(mp100_root: Path) -> None:
    """random.seed(1), then per category in file order: sample(1 + queries) per episode."""
    ds = episodes(mp100_root)
    assert len(ds) == 2 * 2 * 3  # categories x episodes x queries
    rng = random.Random(1)
    expected = []
    for cat in CATEGORIES:
        for _ in range(2):
            drawn = rng.sample(range(4), 4)
            expected += [(cat * 100 + drawn[0], cat * 100 + t) for t in drawn[1:]]
    got = [tuple(int(i) for i in s.pair_id.split(":")[1].split("-")) for s in ds]
    assert got == expected
    assert [s.pair_id for s in episodes(mp100_root)] == [s.pair_id for s in ds]
    assert [s.pair_id for s in episodes(mp100_root, seed=2)] != [s.pair_id for s in ds]


def test_sample_fields(mp100_root: Path) -> None:
    sample = episodes(mp100_root)[0]
    assert sample.category == "cat_body"
    assert sample.source_path.parent == mp100_root / "images/cat_body"
    assert sample.source_points.shape == (4, 2) and sample.visible.all()
    assert sample.pck_reference == 100.0  # POMNet's box: min(127, 10 + 100) - 10
    assert sample.target_bbox.tolist() == [10.0, 10.0, 111.0, 111.0]
    assert sample.flip_permutation.tolist() == [-1, -1, -1, -1]
    assert sample.extra["keypoint_groups"] == {"category_split": ["seen"] * 4}
    assert episodes(mp100_root)[6].extra["keypoint_groups"]["category_split"] == ["unseen"] * 4
    assert category_split("human_body") == "seen" and category_split("sofa") == "unseen"


def test_visibility_and_clipped_reference(tmp_path: Path) -> None:
    root = write_mp100(tmp_path / "mp100", bbox=[-5, 20, 200, 50])
    data = json.loads((root / "annotations/mp100_split1_test.json").read_text())
    data["annotations"][0]["keypoints"][11] = 0  # object 100 (cat_body): point 3 not labelled
    (root / "annotations/mp100_split1_test.json").write_text(json.dumps(data))
    ds = episodes(root, category="cat_body")
    for sample in ds:
        involved = "100" in sample.pair_id.split(":")[1].split("-")
        assert sample.visible.tolist() == [True, True, True, not involved]
        # x1 = 0, x2 = min(127, 0 + 199) -> 127; y2 = 20 + 49 = 69: max side 127
        assert sample.pck_reference == 127.0
    assert len(ds) == 6


def test_marco_pair_lists(mp100_root: Path) -> None:
    """``pairs/pairs_<subset>.json`` is used when present; reference = raw box side."""
    pairs = [{"src_file": "zebra_body/000.jpg", "trg_file": "zebra_body/002.jpg",
              "category_id": 2}]
    (mp100_root / "pairs").mkdir()
    (mp100_root / "pairs/pairs_animal_body_unseen.json").write_text(json.dumps(pairs))
    ds = create_dataset("mp100", mp100_root)
    assert len(ds) == 1 and ds.pairs == "marco"
    sample = ds[0]
    assert sample.pair_id == "animal_body_unseen/00000"
    assert sample.pck_reference == 101.0
    assert sample.target_points[2].tolist() == [70.0, 90.0]
    assert sample.extra["keypoint_groups"]["category_split"] == ["unseen"] * 4
    assert check_mp100(mp100_root) == []
    for chosen in ({"subsets": "animal_body_unseen"}, {"subset": "animal_body_unseen"}):
        assert len(create_dataset("mp100", mp100_root, **chosen)) == 1
    with pytest.raises(InputError, match="pairs_furniture.json: missing annotation file"):
        create_dataset("mp100", mp100_root, subsets="animal_body_unseen,furniture")
    (mp100_root / "images/zebra_body/002.jpg").unlink()
    assert check_mp100(mp100_root) == ["images/zebra_body/002.jpg"]
    pairs[0]["trg_file"] = "zebra_body/999.jpg"
    (mp100_root / "pairs/pairs_animal_body_unseen.json").write_text(json.dumps(pairs))
    with pytest.raises(InputError, match="entry 0 names an image"):
        create_dataset("mp100", mp100_root)


def test_bad_input_is_named(mp100_root: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="fewer than 1 \\+ 15 queries"):
        create_dataset("mp100", mp100_root, pairs="episodes")
    with pytest.raises(InputError, match="mp_split"):
        create_dataset("mp100", mp100_root, pairs="episodes", mp_split=6)
    with pytest.raises(InputError, match="missing MP-100 annotations folder"):
        create_dataset("mp100", tmp_path)
    (mp100_root / "annotations/mp100_split3_test.json").unlink()
    assert check_mp100(mp100_root) == ["annotations/mp100_split3_test.json"]


def test_pck_by_hand_through_eval(mp100_root: Path, tmp_path: Path) -> None:
    """Identical images, so the prediction is the source point. cat_body (seen): every target
    point is the source point: PCK 1. zebra_body (unseen): points 2 and 3 of two objects lie
    >= 20 px apart, beyond 0.15 x 100 px: PCK 2/4 per pair. 6 pairs each: overall 0.75."""
    from semcorr.eval.benchmark import compute_metrics, evaluate

    matcher = identity_matcher()
    ds = episodes(mp100_root)
    results = evaluate(matcher, ds, tmp_path, progress=False, plot=False,
                       protocol="generalisation")
    alphas = ("0.05", "0.10", "0.15")
    assert results["pairs"] == 12 and results["skipped"] == 0
    assert results["headline"].startswith("category_split=unseen")
    groups = results["groups"]["category_split"]
    assert {k: (v["pairs"], v["keypoints"]) for k, v in groups.items()} == {
        "seen": (6, 24), "unseen": (6, 24)}
    for a in alphas:
        for kind in ("per_image", "per_keypoint"):
            assert results["pck_all_keypoints"][a][kind] == pytest.approx(0.75)
            assert results["pck"][a][kind] == pytest.approx(0.5)  # the headline: unseen
            assert groups["seen"][a][kind] == pytest.approx(1.0)
            assert groups["unseen"][a][kind] == pytest.approx(0.5)
    for label, expected in {"seen": 1.0, "unseen": 0.5}.items():  # the same from the cache
        ids = {s.pair_id for s in ds if s.extra["keypoint_groups"]["category_split"][0] == label}
        subset = compute_metrics(tmp_path / "predictions.jsonl", ids, [0.10])
        assert subset["pairs"] == 6
        assert subset["pck_all_keypoints"]["0.10"]["per_image"] == pytest.approx(expected)


def test_prepare_verifies_and_says_what_to_fetch(mp100_root: Path, tmp_path: Path) -> None:
    from semcorr.data.prepare import prepare

    report = prepare("mp100", mp100_root, fetch=False, progress=False)
    assert report["complete"] and report["missing"] == []
    report = prepare("mp100", tmp_path / "empty", fetch=False, progress=False)
    assert not report["complete"] and "Google Drive" in report["manual"]
    assert report["checksums"] == {"mp100_pairs.zip": "unknown: no checksum is published"}


def test_marco_rows_pair_visible_points_by_position(mp100_root: Path) -> None:
    """MARCO's rows: the visible points of each image in order, paired by position. With point
    1 hidden in the source, ids pair (0, 2, 3) with (0, 2, 3); MARCO pairs them with (0, 1, 2)."""
    path = mp100_root / "annotations/mp100_split1_test.json"
    data = json.loads(path.read_text())
    data["annotations"][4]["keypoints"][5] = 0  # zebra_body object 0: point 1 not labelled
    path.write_text(json.dumps(data))
    pairs = [{"src_file": "zebra_body/000.jpg", "trg_file": "zebra_body/002.jpg",
              "category_id": 2}]
    write_json(mp100_root / "pairs/pairs_animal_body_unseen.json", pairs)
    by_id = create_dataset("mp100", mp100_root)[0]
    assert by_id.visible.tolist() == [True, False, True, True]
    marco = create_dataset("mp100", mp100_root, rows="marco")[0]
    assert marco.source_points.tolist() == [[30.0, 30.0], [30.0, 90.0], [90.0, 30.0]]
    assert marco.target_points.tolist() == [[30.0, 30.0], [90.0, 30.0], [70.0, 90.0]]
    assert marco.visible.tolist() == [True] * 3 and marco.extra["rows"] == "marco"
    assert marco.extra["keypoint_groups"]["category_split"] == ["unseen"] * 3
    with pytest.raises(InputError, match="rows must be"):
        create_dataset("mp100", mp100_root, pairs="episodes", rows="marco")
