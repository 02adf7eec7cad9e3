"""PCK breakdowns: answers computable by hand, tables, and the evaluate() integration."""

from __future__ import annotations

import math

import pytest
import torch

from semcorr.analysis.breakdowns import BreakdownAccumulator, breakdown_tables


def _acc() -> BreakdownAccumulator:
    acc = BreakdownAccumulator(["0.10"])
    # pair 1: easy (viewpoint 0), cat, 2 of 2 correct; keypoints 0 (geo) and 3
    acc.add(torch.tensor([[True], [True]]), "cat", [0, 3], torch.tensor([True, False]),
            {"viewpoint_variation": 0, "occlusion": 1})
    # pair 2: hard (viewpoint 2), cat, 1 of 4 correct; keypoints 0, 1 (geo), 3, 4
    acc.add(torch.tensor([[True], [False], [False], [False]]), "cat", [0, 1, 3, 4],
            torch.tensor([False, True, False, False]), {"viewpoint_variation": 2})
    # pair 3: hard, dog, 0 of 1
    acc.add(torch.tensor([[False]]), "dog", [3], torch.tensor([False]),
            {"viewpoint_variation": 2, "truncation": 0})
    return acc


def test_known_answer() -> None:
    s = _acc().summary()
    view = s["by_difficulty"]["viewpoint_variation"]
    assert view["0"] == {"n": 1, "0.10": {"mean": 1.0, "std": 0.0}}
    assert view["2"]["n"] == 2
    assert view["2"]["0.10"]["mean"] == pytest.approx(0.125)  # (1/4 + 0) / 2
    assert view["2"]["0.10"]["std"] == pytest.approx(0.125)  # population std of {0.25, 0}
    assert s["by_difficulty"]["occlusion"]["1"]["n"] == 1
    assert "scale_variation" not in s["by_difficulty"]
    cat = s["by_category"]["cat"]["0.10"]
    assert cat["mean"] == pytest.approx(0.625) and cat["std"] == pytest.approx(0.375)
    # geometry-aware per pair: pair 1 -> 1, pair 2 -> 0; rest: pair 1 -> 1, 2 -> 1/3, 3 -> 0
    assert s["geometry"]["geo-aware"]["0.10"]["mean"] == pytest.approx(0.5)
    assert s["geometry"]["rest"]["n"] == 3
    assert s["geometry"]["rest"]["0.10"]["mean"] == pytest.approx(4 / 9)
    # keypoint 3 seen 3 times, correct once; pooled with binomial std
    kp3 = s["by_keypoint"]["3"]
    assert kp3["n"] == 3 and kp3["0.10"]["mean"] == pytest.approx(1 / 3)
    assert kp3["0.10"]["std"] == pytest.approx(math.sqrt(2 / 9))
    assert list(s["by_keypoint"]) == ["0", "1", "3", "4"]


def test_empty_and_missing_ids() -> None:
    acc = BreakdownAccumulator(["0.05", "0.10"])
    acc.add(torch.zeros(0, 2, dtype=torch.bool), "cat", [], torch.zeros(0, dtype=torch.bool))
    acc.add(torch.ones(2, 2, dtype=torch.bool), "cat", None, torch.zeros(2, dtype=torch.bool))
    s = acc.summary()
    assert s["by_category"]["cat"]["n"] == 1 and s["by_keypoint"] == {}
    assert s["by_difficulty"] == {}


def test_tables() -> None:
    text = breakdown_tables(_acc().summary(), ["0.10"])
    assert "### by viewpoint variation" in text
    assert "| 2 | 2 | 12.5 ± 12.5 |" in text
    assert "| geo-aware | 2 | 50.0 ± 50.0 |" in text
    assert "| dog | 1 | 0.0 ± 0.0 |" in text
