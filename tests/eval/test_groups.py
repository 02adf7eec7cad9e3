"""Keypoint-group breakdowns (semcorr.eval.groups): hand-computed per-image and per-keypoint PCK
per label, the headline group, and malformed groups refused with a clear message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from semcorr.errors import InputError
from semcorr.eval.groups import GroupAccumulator, group_labels, group_tables, headline_of
from semcorr.eval.metrics import compute_metrics
from semcorr.eval.protocols import get_protocol


def _record(pair_id: str, errors: list[list[float]], sets: list[str],
            headline: bool = True) -> dict[str, Any]:
    """A scored pair: ground truth at the origin, predictions offset by ``errors``, reference
    100 px, one ``keypoint_set`` label per row and a constant ``split`` label."""
    n = len(errors)
    record = {"pair_id": pair_id, "category": "car", "reference": 100.0, "gt": [[0.0, 0.0]] * n,
              "pred": errors, "geo_aware": [False] * n, "keypoint_ids": list(range(n)),
              "groups": {"keypoint_set": sets, "split": ["test"] * n}}
    if headline:
        record["headline_group"] = ["keypoint_set", "unseen"]
    return record


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


RECORDS = [
    # seen errors 0 and 20; unseen 4 and 8
    _record("A", [[0, 0], [20, 0], [4, 0], [0, 8]], ["seen", "seen", "unseen", "unseen"]),
    # unseen only: 12 and exactly 10 (wrong at 0.10: the rule is strict "<")
    _record("B", [[12, 0], [6, 8]], ["unseen", "unseen"]),
    # seen only: 3
    _record("C", [[3, 0]], ["seen"]),
]


def test_hand_computed_pck_per_label(tmp_path: Path) -> None:
    path = _write(tmp_path / "predictions.jsonl", RECORDS)
    out = compute_metrics(path, None, [0.05, 0.10], protocol=get_protocol("spair-u"))
    seen, unseen = out["groups"]["keypoint_set"]["seen"], out["groups"]["keypoint_set"]["unseen"]
    # seen: pairs A (1/2 at both) and C (1 at both); keypoints 0, 20, 3
    assert (seen["pairs"], seen["keypoints"]) == (2, 3)
    assert seen["0.05"] == {"per_image": 0.75, "per_keypoint": pytest.approx(2 / 3)}
    assert seen["0.10"] == {"per_image": 0.75, "per_keypoint": pytest.approx(2 / 3)}
    # unseen: pairs A (1/2 at 0.05, 1 at 0.10) and B (0, 0); keypoints 4, 8, 12, 10
    assert (unseen["pairs"], unseen["keypoints"]) == (2, 4)
    assert unseen["0.05"] == {"per_image": 0.25, "per_keypoint": 0.25}
    assert unseen["0.10"] == {"per_image": 0.5, "per_keypoint": 0.5}
    # a breakdown with one label covers every keypoint: the all-keypoint numbers
    everything = out["groups"]["split"]["test"]
    assert (everything["pairs"], everything["keypoints"]) == (3, 7)
    assert everything["0.10"]["per_image"] == pytest.approx((3 / 4 + 0 + 1) / 3)
    assert everything["0.10"]["per_keypoint"] == pytest.approx(4 / 7)


def test_headline_is_the_named_group(tmp_path: Path) -> None:
    path = _write(tmp_path / "predictions.jsonl", RECORDS)
    out = compute_metrics(path, None, [0.10], protocol=get_protocol("spair-u"))
    assert out["headline"].startswith("keypoint_set=unseen")
    assert out["pck"]["0.10"] == {"per_image": 0.5, "per_keypoint": 0.5}
    assert out["pck_all_keypoints"]["0.10"]["per_image"] == pytest.approx((3 / 4 + 0 + 1) / 3)
    plain = [{k: v for k, v in r.items() if k != "headline_group"} for r in RECORDS]
    out = compute_metrics(_write(tmp_path / "plain.jsonl", plain), None, [0.10])
    assert out["headline"] == "all visible keypoints" and "pck_all_keypoints" not in out
    assert out["pck"]["0.10"]["per_keypoint"] == pytest.approx(4 / 7)


def test_accumulator_matches_a_direct_computation() -> None:
    """Random pairs: each label's per-image mean and pooled rate, recomputed by hand."""
    gen = torch.Generator().manual_seed(0)
    acc = GroupAccumulator(["a", "b"])
    pairs = []
    for _ in range(20):
        n = int(torch.randint(1, 9, (1,), generator=gen))
        correct = torch.rand(n, 2, generator=gen) > 0.5
        labels = ["x" if v else "y" for v in (torch.rand(n, generator=gen) > 0.3).tolist()]
        acc.add(correct, {"g": labels})
        pairs.append((correct, labels))
    summary = acc.summary()["g"]
    for label in ("x", "y"):
        per_pair = [c[[lab == label for lab in labs]].double().mean(0) for c, labs in pairs
                    if label in labs]
        pooled = torch.cat([c[[lab == label for lab in labs]] for c, labs in pairs]).double()
        assert summary[label]["pairs"] == len(per_pair)
        assert summary[label]["keypoints"] == pooled.shape[0]
        assert summary[label]["b"]["per_image"] == pytest.approx(
            float(torch.stack(per_pair)[:, 1].mean()))
        assert summary[label]["a"]["per_keypoint"] == pytest.approx(float(pooled[:, 0].mean()))
    assert "| x |" in group_tables(acc.summary(), ["a", "b"])


def test_labels_of_the_visible_rows_only() -> None:
    extra = {"keypoint_groups": {"keypoint_set": ["seen", "seen", "unseen", "unseen"]},
             "headline_group": ("keypoint_set", "unseen")}
    assert group_labels(extra, torch.tensor([1, 3])) == {"keypoint_set": ["seen", "unseen"]}
    assert group_labels({}, torch.tensor([0])) == {}
    assert headline_of(extra) == ["keypoint_set", "unseen"]
    with pytest.raises(ValueError, match="one string label per keypoint"):
        group_labels({"keypoint_groups": {"s": ["a"]}}, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="headline_group"):
        headline_of({"headline_group": "unseen"})


def test_malformed_groups_in_a_predictions_file_name_the_line(tmp_path: Path) -> None:
    bad = dict(RECORDS[1], groups={"keypoint_set": ["unseen"]})  # one label for two rows
    path = _write(tmp_path / "predictions.jsonl", [RECORDS[0], bad])
    with pytest.raises(InputError, match=r"predictions.jsonl:2: 'keypoint_groups'"):
        compute_metrics(path, None, [0.10])
    other = dict(RECORDS[1], headline_group=["keypoint_set", "seen"])
    path = _write(tmp_path / "mixed.jsonl", [RECORDS[0], other])
    with pytest.raises(InputError, match="different headline groups"):
        compute_metrics(path, None, [0.10])
