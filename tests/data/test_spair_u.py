"""SPair-U (semcorr.data.spair_u) on a tiny fixture in the released layout: the loader, the
seen/unseen rows (ids 0-29 reused by the new file, never confused), the hand-computed PCK of each
keypoint set per image and per keypoint, the end-to-end evaluation and 'data prepare'."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semcorr.data import create_dataset, list_datasets
from semcorr.data.prepare import check_dataset, prepare
from semcorr.data.spair_u import UNSEEN_ID_OFFSET
from semcorr.errors import InputError
from semcorr.eval.groups import group_labels, headline_of
from semcorr.eval.metrics import compute_metrics
from semcorr.eval.protocols import default_protocol, get_protocol
from spair_u_fixture import PAIR_IDS, build_spair_u


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return build_spair_u(tmp_path)


def test_registered_with_its_protocol() -> None:
    assert "spair-u" in list_datasets()
    assert default_protocol("spair-u") == "spair-u"
    assert get_protocol("spair-u").thresholds == (0.01, 0.05, 0.10, 0.15)
    assert get_protocol("spair-u").comparison == "<"


def test_pairs_in_the_released_order(root: Path) -> None:
    ds = create_dataset("spair-u", root)
    assert [s.pair_id for s in ds] == list(PAIR_IDS)
    assert len(create_dataset("spair-u", root, category="car")) == 2
    assert len(ds.image_paths()) == 5


def test_seen_then_unseen_rows_from_their_own_files(root: Path) -> None:
    sample = create_dataset("spair-u", root, category="car")[0]  # 2010_000001 -> 2010_000002
    assert sample.num_keypoints == 30 + 30
    rows = sample.visible.nonzero().flatten()
    assert sample.keypoint_ids[rows].tolist() == [0, 4, UNSEEN_ID_OFFSET + 0,
                                                  UNSEEN_ID_OFFSET + 1, UNSEEN_ID_OFFSET + 3]
    # id 0 is in both files at different places: each row reads its own file
    assert sample.source_points[0].tolist() == [5.0, 6.0]
    assert sample.source_points[30].tolist() == [6.0, 6.0]
    assert sample.target_points[30].tolist() == [7.0, 7.0]
    labels = group_labels(sample.extra, rows)["keypoint_set"]
    assert labels == ["seen", "seen", "unseen", "unseen", "unseen"]
    assert headline_of(sample.extra) == ["keypoint_set", "unseen"]
    # SPair's car partners (0, 1) apply to the seen rows only; the new rows have none
    assert sample.flip_permutation[0] == 1 and sample.flip_permutation[1] == 0
    assert (sample.flip_permutation[30:] == -1).all()
    assert (sample.symmetry_groups[30:] == -1).all()
    assert sample.pck_reference == 34.0  # larger side of the target box [1, 1, 35, 21]
    assert sample.extra["viewpoint_variation"] == 1
    assert sample.target_visible[30 + 2] and not sample.visible[30 + 2]  # id 2: target only


def test_sibling_spair_u_folder(tmp_path: Path) -> None:
    root = build_spair_u(tmp_path, sibling=True)
    assert not (root / "ExtraPairAnnotation").exists()
    ds = create_dataset("spair-u", root)
    assert ds.extra_root == tmp_path / "SPair-U"
    assert [s.pair_id for s in ds] == list(PAIR_IDS)


def test_missing_extra_folders_say_how_to_get_them(tmp_path: Path, root: Path) -> None:
    import shutil

    shutil.rmtree(root / "ExtraImageAnnotation")
    with pytest.raises(InputError, match="semcorr data prepare spair-u"):
        create_dataset("spair-u", root)


def _records(samples, offsets) -> list[dict]:
    """Prediction records as the evaluator writes them, with ``pred = gt + (offset, 0)``."""
    records = []
    for sample in samples:
        rows = sample.visible.nonzero().flatten()
        gt = sample.target_points[rows].double()
        labels = group_labels(sample.extra, rows)
        shift = torch.tensor([offsets(label, int(k) % UNSEEN_ID_OFFSET) for label, k in zip(
            labels["keypoint_set"], sample.keypoint_ids[rows].tolist(), strict=True)])
        pred = gt + torch.stack([shift * sample.pck_reference, torch.zeros_like(shift)], 1)
        records.append({
            "pair_id": sample.pair_id, "category": sample.category,
            "reference": sample.pck_reference, "gt": gt.tolist(), "pred": pred.tolist(),
            "geo_aware": [False] * len(rows), "keypoint_ids": sample.keypoint_ids[rows].tolist(),
            "groups": labels, "headline_group": headline_of(sample.extra)})
    return records


def test_hand_computed_pck_seen_and_unseen(root: Path, tmp_path: Path) -> None:
    """Seen rows exact; unseen rows off by 0.07·ref (even id) or 0.5·ref (odd id).

    Visible unseen ids: car A→B 0, 1, 3 (1 of 3 within 0.10); car B→C 1, 2 (1 of 2);
    aeroplane none (left out). Seen: 2 + 1 + 1 keypoints, all correct."""
    import json

    def offsets(label: str, raw_id: int) -> float:
        return 0.0 if label == "seen" else (0.07 if raw_id % 2 == 0 else 0.5)

    path = tmp_path / "predictions.jsonl"
    records = _records(create_dataset("spair-u", root), offsets)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = compute_metrics(path, None, protocol=get_protocol("spair-u"))
    seen, unseen = (out["groups"]["keypoint_set"][k] for k in ("seen", "unseen"))
    assert (seen["pairs"], seen["keypoints"]) == (3, 4)
    assert (unseen["pairs"], unseen["keypoints"]) == (2, 5)
    for alpha in ("0.01", "0.05", "0.10", "0.15"):
        assert seen[alpha] == {"per_image": 1.0, "per_keypoint": 1.0}
    assert unseen["0.05"] == {"per_image": 0.0, "per_keypoint": 0.0}
    assert unseen["0.10"]["per_image"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert unseen["0.10"]["per_keypoint"] == pytest.approx(2 / 5)
    assert out["pck"]["0.10"]["per_image"] == pytest.approx(5 / 12)  # the headline: unseen
    assert out["headline"].startswith("keypoint_set=unseen")
    assert out["pck_all_keypoints"]["0.10"]["per_image"] == pytest.approx(
        (3 / 5 + 2 / 3 + 1) / 3)
    # per-id table: the new id 0 (row 100) is not merged with SPair's id 0
    assert out["breakdowns"]["by_keypoint"]["0"]["n"] == 3
    assert out["breakdowns"]["by_keypoint"][str(UNSEEN_ID_OFFSET)]["n"] == 1


def test_evaluate_end_to_end(root: Path, tmp_path: Path) -> None:
    """A real matcher on the fixture: every visible row scored, grouped and counted."""
    from semcorr import Matcher, create_backbone
    from semcorr.eval.benchmark import evaluate

    matcher = Matcher(create_backbone("dense-sift", image_size=64), pose_align=True)
    results = evaluate(matcher, create_dataset("spair-u", root), tmp_path / "out", plot=False,
                       progress=False)
    assert results["pairs"] == 3 and results["skipped"] == 0
    assert results["protocol"]["name"] == "spair-u"
    assert results["thresholds"] == ["0.01", "0.05", "0.10", "0.15"]
    groups = results["groups"]["keypoint_set"]
    assert {k: (v["pairs"], v["keypoints"]) for k, v in groups.items()} == {
        "seen": (3, 4), "unseen": (2, 5)}
    assert results["pck"]["0.10"]["per_image"] == groups["unseen"]["0.10"]["per_image"]
    assert results["counts"]["all"]["keypoints"] == 9
    table = (tmp_path / "out" / "results.md").read_text()
    assert "### by keypoint set" in table and "**headline** (keypoint_set=unseen" in table


def test_prepare_verifies_both_places(tmp_path: Path) -> None:
    root = build_spair_u(tmp_path / "in", sibling=False)
    assert check_dataset("spair-u", root) == []
    sibling = build_spair_u(tmp_path / "beside", sibling=True)
    assert check_dataset("spair-u", sibling) == []
    (sibling.parent / "SPair-U/ExtraImageAnnotation/car/2010_000003.json").unlink()
    (sibling / "JPEGImages/car/2010_000001.jpg").unlink()
    report = prepare("spair-u", sibling, fetch=False)
    assert not report["complete"]
    assert set(report["missing"]) == {"JPEGImages/car/2010_000001.jpg",
                                      "../SPair-U/ExtraImageAnnotation/car/2010_000003.json"}
    bare = tmp_path / "bare" / "SPair-71k"
    bare.mkdir(parents=True)
    assert prepare("spair-u", bare, fetch=False)["missing"] == [
        "JPEGImages/", "ImageAnnotation/", "ExtraPairAnnotation/ (SPair-U: here or in ../SPair-U)",
        "ExtraImageAnnotation/ (SPair-U: here or in ../SPair-U)"]


def test_prepare_downloads_from_a_mirror_and_resumes(tmp_path: Path) -> None:
    """The archives fetched from a (local) mirror are unpacked into ROOT; a rerun downloads
    nothing."""
    import shutil
    import zipfile

    source = build_spair_u(tmp_path / "src")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with zipfile.ZipFile(mirror / "SPair-U.zip", "w") as archive:
        for path in sorted(source.rglob("Extra*/**/*.json")):
            archive.write(path, Path("SPair-U") / path.relative_to(source))
    root = tmp_path / "data" / "SPair-71k"
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("Extra*"))
    report = prepare("spair-u", root, mirror=mirror.as_uri(), progress=False)
    assert report["complete"], report
    assert report["downloaded"] == ["SPair-U.zip"]
    assert len(create_dataset("spair-u", root)) == 3
    assert prepare("spair-u", root, mirror=mirror.as_uri(), progress=False)["downloaded"] == []
