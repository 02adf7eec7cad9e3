"""SOCO loader on a tiny copy of its released layout: SOC / Cross-SOC rows, concept groups,
and PCK by hand through semcorr's eval."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from identity_pairs import SIZE, identity_matcher, write_json, write_texture

from semcorr.data import create_dataset
from semcorr.data.soco import check_soco
from semcorr.errors import InputError

BASE = {"front_left_wheel": (30.0, 90.0), "front_right_wheel": (90.0, 90.0),
        "left_mirror": (30.0, 30.0), "right_mirror": (90.0, 30.0)}
CONCEPT = {"front_left_wheel": "wheel", "front_right_wheel": "wheel",
           "left_mirror": "mirror", "right_mirror": "mirror"}


def points(moved: float = 0.0) -> list[dict]:
    """SOCO keypoint records; ``moved`` shifts both mirrors right by that many pixels."""
    out = []
    for i, (name, (x, y)) in enumerate(BASE.items()):
        shift = moved if CONCEPT[name] == "mirror" else 0.0
        out.append({"id": i, "name": name, "pos": [x + shift, y], "concept_id": 7,
                    "concept_name": CONCEPT[name], "kind": "structural"
                    if CONCEPT[name] == "wheel" else "functional", "shared": True})
    return out


def pair(src: tuple[str, str], trg: tuple[str, str], group: str, moved: float = 0.0) -> dict:
    return {
        "pair_id": 1, "pair_group": group, "src_category": src[0], "trg_category": trg[0],
        "src_image": src[1], "trg_image": trg[1], "src_imsize": [SIZE, SIZE],
        "trg_imsize": [SIZE, SIZE], "src_bndbox": [10, 10, 110, 110],
        "trg_bndbox": [10, 10, 110, 110], "src_keypoints": points(),
        "trg_keypoints": points(moved), "semantic_overlap": list(BASE),
        "concept_matches": [{"concept_name": "wheel",
                             "src_keypoints": ["front_left_wheel", "front_right_wheel"],
                             "trg_keypoints": ["front_left_wheel", "front_right_wheel"]}],
    }


def write_soco(root: Path) -> Path:
    """Two intra ``car`` pairs (points unchanged) and one cross ``car`` pair from a bus whose
    mirrors sit 40 px further right in the target."""
    for category, name in (("car", "car_1.JPEG"), ("car", "car_2.JPEG"), ("bus", "bus_1.JPEG")):
        write_texture(root / "Images" / category / name, 1)
    files = {
        "intra/car/00001.json": pair(("car", "car_1.JPEG"), ("car", "car_2.JPEG"), "car"),
        "intra/car/00002.json": pair(("car", "car_2.JPEG"), ("car", "car_1.JPEG"), "car"),
        "cross/car/00001.json": pair(("bus", "bus_1.JPEG"), ("car", "car_1.JPEG"), "car",
                                     moved=40.0),
    }
    for relative, data in files.items():
        write_json(root / "PairAnnotations" / relative, data)
    return root


@pytest.fixture
def soco_root(tmp_path: Path) -> Path:
    return write_soco(tmp_path / "SOCOv1")


def test_pairs_and_rows(soco_root: Path) -> None:
    ds = create_dataset("soco", soco_root)
    assert [s.pair_id for s in ds] == ["intra/car/00001", "intra/car/00002", "cross/car/00001"]
    intra, cross = ds[0], ds[2]
    assert intra.category == "car" and cross.category == "cross:car"
    assert cross.source_path == soco_root / "Images/bus/bus_1.JPEG"
    assert cross.target_points[2].tolist() == [70.0, 30.0]
    # four SOC rows, then one CC row per source wheel (each may land on either target wheel)
    assert cross.keypoint_ids.tolist() == [0, 1, 2, 3, 0, 1] and cross.visible.all()
    assert cross.source_points[4:].tolist() == [[30.0, 90.0], [90.0, 90.0]]
    assert cross.target_points[4:].tolist() == [[30.0, 90.0], [30.0, 90.0]]
    assert cross.extra["target_alternatives"][3:] == [
        [[130.0, 30.0]], [[30.0, 90.0], [90.0, 90.0]], [[30.0, 90.0], [90.0, 90.0]]]
    assert cross.pck_reference == 100.0
    assert intra.extra["keypoint_groups"] == {
        "correspondence_type": ["SOC"] * 4 + ["CC"] * 2,
        "keypoint_kind": ["structural", "structural", "functional", "functional",
                          "structural", "structural"]}
    assert cross.extra["keypoint_groups"]["correspondence_type"] == ["Cross-SOC"] * 4 + [
        "Cross-CC"] * 2
    assert cross.extra["concept_matches"] == [
        {"concept": "wheel", "source": [[30.0, 90.0], [90.0, 90.0]],
         "target": [[30.0, 90.0], [90.0, 90.0]]}]
    assert len(create_dataset("soco", soco_root, pairs="cross")) == 1
    assert len(create_dataset("soco", soco_root, pairs="intra", category="car")) == 2
    assert check_soco(soco_root) == []


def test_bad_input_is_named(soco_root: Path) -> None:
    path = soco_root / "PairAnnotations/intra/car/00002.json"
    data = json.loads(path.read_text())
    data["semantic_overlap"].append("tail_light")
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="'tail_light' is matched but not listed"):
        create_dataset("soco", soco_root)[1]
    with pytest.raises(InputError, match="soco pairs must be"):
        create_dataset("soco", soco_root, pairs="all")
    (soco_root / "Images/bus/bus_1.JPEG").unlink()
    assert check_soco(soco_root) == ["Images/bus/bus_1.JPEG"]
    shutil.rmtree(soco_root / "PairAnnotations/cross")
    assert check_soco(soco_root) == ["PairAnnotations/cross/"]
    with pytest.raises(InputError, match="cross: missing SOCO pair folder"):
        create_dataset("soco", soco_root)


def test_pck_by_hand_through_eval(soco_root: Path, tmp_path: Path) -> None:
    """Identical images: the prediction is the source point. Intra pairs: PCK 1. The cross
    pair: the mirrors moved 40 px > 0.15 x 100 px: SOC 2/4, its two CC wheels right, so 4/6
    over its rows. Mean over pairs (2 + 4/6) / 3; SOCO's own average (per pair group, then
    over groups) (1 + 4/6) / 2."""
    from semcorr.eval.benchmark import evaluate

    matcher = identity_matcher()
    results = evaluate(matcher, create_dataset("soco", soco_root), tmp_path, progress=False,
                       plot=False, protocol="generalisation")
    assert results["pairs"] == 3 and results["skipped"] == 0
    assert results["headline"].startswith("correspondence_type=SOC")
    types, kinds = results["groups"]["correspondence_type"], results["groups"]["keypoint_kind"]
    assert {k: (v["pairs"], v["keypoints"]) for k, v in types.items()} == {
        "CC": (2, 4), "Cross-CC": (1, 2), "Cross-SOC": (1, 4), "SOC": (2, 8)}
    for a in ("0.05", "0.10", "0.15"):
        assert results["pck_all_keypoints"][a]["per_image"] == pytest.approx((2 + 4 / 6) / 3)
        assert results["pck_all_keypoints"][a]["per_keypoint"] == pytest.approx(16 / 18)
        assert types["CC"][a]["per_image"] == types["Cross-CC"][a]["per_image"] == 1.0
        assert results["pck"][a]["per_image"] == pytest.approx(1.0)  # the headline: SOC
        assert types["SOC"][a]["per_image"] == pytest.approx(1.0)
        assert types["Cross-SOC"][a]["per_image"] == pytest.approx(0.5)
        assert kinds["structural"][a]["per_image"] == pytest.approx(1.0)  # wheels never move
        assert kinds["functional"][a]["per_image"] == pytest.approx(2 / 3)  # mirrors: 1, 1, 0
        assert kinds["functional"][a]["per_keypoint"] == pytest.approx(4 / 6)
        categories = results["per_category"]
        assert categories["car"][a]["per_image"] == pytest.approx(1.0)
        assert categories["cross:car"][a]["per_image"] == pytest.approx(4 / 6)


def test_concept_correspondence_by_hand(soco_root: Path, tmp_path: Path) -> None:
    """CC under ``--protocol soco``: a source point is right when it is within reach of ANY of
    its targets, merged over the concept groups naming it. In the first intra pair the target's
    left mirror moves 8 px right (30 -> 38); the groups say: left mirror -> {right mirror, left
    mirror} and left mirror -> {right mirror} (merged: both), right mirror -> {left mirror}.
    Identity predictions: wheels right (0 px); left mirror 8 px from its nearest target (right
    at 0.10 and 0.15 = 10 and 15 px, wrong at 0.05 = 5 px); right mirror 52 px away, wrong.
    CC of that pair: 2/4 at 0.05, 3/4 at 0.10 and 0.15; the second intra pair 1 (wheels only).
    SOC of the first pair: 3/4 at 0.05, 1 above. Per category then over categories."""
    from semcorr.eval.benchmark import evaluate

    path = soco_root / "PairAnnotations/intra/car/00001.json"
    data = json.loads(path.read_text())
    data["trg_keypoints"][2]["pos"] = [38.0, 30.0]
    data["concept_matches"] += [
        {"concept_name": "mirror", "src_keypoints": ["left_mirror"],
         "trg_keypoints": ["right_mirror", "left_mirror"]},
        {"concept_name": "mirror-2", "src_keypoints": ["left_mirror"],
         "trg_keypoints": ["right_mirror"]},
        {"concept_name": "mirror-3", "src_keypoints": ["right_mirror"],
         "trg_keypoints": ["left_mirror"]}]
    path.write_text(json.dumps(data))
    results = evaluate(identity_matcher(), create_dataset("soco", soco_root, pairs="intra"),
                       tmp_path, progress=False, plot=False, protocol="soco")
    types = results["groups"]["correspondence_type"]
    assert {k: (v["pairs"], v["keypoints"]) for k, v in types.items()} == {
        "CC": (2, 6), "SOC": (2, 8)}
    # α: (CC per image, CC per keypoint, SOC per image = the headline)
    expected = {"0.05": ((2 / 4 + 1) / 2, 4 / 6, (3 / 4 + 1) / 2),
                "0.10": ((3 / 4 + 1) / 2, 5 / 6, 1.0), "0.15": ((3 / 4 + 1) / 2, 5 / 6, 1.0)}
    for a, (cc_image, cc_keypoint, soc) in expected.items():
        assert types["CC"][a]["per_image"] == pytest.approx(cc_image)
        assert types["CC"][a]["per_keypoint"] == pytest.approx(cc_keypoint)
        assert results["pck"][a]["per_image"] == types["SOC"][a]["per_image"]
        assert types["SOC"][a]["per_image"] == pytest.approx(soc)


def test_prepare_verifies(soco_root: Path) -> None:
    from semcorr.data.prepare import prepare

    report = prepare("soco", soco_root, fetch=False, progress=False)
    assert report["complete"] and report["missing"] == []
    assert sorted(report["checksums"]) == ["Images.zip", "KeypointAnnotations.zip",
                                           "PairAnnotations.zip"]
    (soco_root / "Images/car/car_2.JPEG").write_bytes(b"")
    report = prepare("soco", soco_root, fetch=False, progress=False)
    assert not report["complete"] and any("car_2.JPEG" in m for m in report["missing"])
