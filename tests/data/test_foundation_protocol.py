"""``semcorr eval --protocol foundation-finetune`` on SPair-71k and PF-WILLOW fixtures: the box
reference (the image's size without a box), ``<=``, α 0.05–0.20 and the mean ± std tables,
recomputed by hand from the recorded predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from semcorr.cli.main import main

ALPHAS = (0.05, 0.10, 0.15, 0.20)


def _run(dataset: str, root: Path, out: Path) -> tuple[dict, list[dict]]:
    assert main(["eval", "--dataset", dataset, "--root", str(root), "--protocol",
                 "foundation-finetune", "--backbone", "dense-sift", "--backbone-option",
                 "image_size=64", "--out", str(out), "--quiet"]) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return json.loads((out / "results.json").read_text()), records


def _by_hand(records: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-keypoint mean and std (pooled 0/1), per-image mean and std (over pairs)."""
    hits, pairs = [], []
    for record in records:
        error = np.linalg.norm(np.array(record["pred"]) - np.array(record["gt"]), axis=1)
        correct = error[:, None] <= np.array(ALPHAS)[None] * record["reference"]
        hits.append(correct)
        pairs.append(correct.mean(axis=0))
    pooled, per_pair = np.concatenate(hits), np.stack(pairs)
    return pooled.mean(0), pooled.std(0), per_pair.mean(0), per_pair.std(0)


def _check(results: dict, records: list[dict]) -> None:
    stats = results["statistics"]["overall"]
    kp_mean, kp_std, im_mean, im_std = _by_hand(records)
    for i, key in enumerate(results["thresholds"]):
        assert stats["per_keypoint"][key]["mean"] == pytest.approx(kp_mean[i])
        assert stats["per_keypoint"][key]["std"] == pytest.approx(kp_std[i])
        assert stats["per_image"][key]["mean"] == pytest.approx(im_mean[i])
        assert stats["per_image"][key]["std"] == pytest.approx(im_std[i])


def test_spair_box_reference_and_difficulty_tables(spair_root: Path, tmp_path: Path) -> None:
    results, records = _run("spair", spair_root, tmp_path / "spair")
    assert results["thresholds"] == ["0.05", "0.10", "0.15", "0.20"]
    assert results["protocol"]["comparison"] == "distance <= alpha * reference"
    # target boxes [1, 1, 35, 21] and [0, 0, 20, 29]: larger sides 34 and 29
    assert sorted(r["reference"] for r in records) == [29.0, 34.0]
    _check(results, records)
    difficulty = results["statistics"]["by_difficulty"]
    assert set(difficulty) == {"viewpoint_variation", "scale_variation", "truncation",
                               "occlusion"}
    assert list(difficulty["scale_variation"]) == ["2"]
    assert difficulty["scale_variation"]["2"]["pairs"] == 2
    assert list(results["statistics"]["by_category"]) == ["cat"]
    table = (tmp_path / "spair" / "results.md").read_text()
    assert "PCK mean ± std" in table and "scale_variation = 2" in table


def test_willow_falls_back_to_the_image_size(willow_root: Path, tmp_path: Path) -> None:
    results, records = _run("pf-willow", willow_root, tmp_path / "willow")
    assert {r["reference"] for r in records} == {48.0}  # 48 x 40 images, no box
    assert results["protocol"]["average"] == "pairs"  # not over classes, as pf does
    _check(results, records)
