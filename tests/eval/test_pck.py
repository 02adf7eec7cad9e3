"""Known-answer tests of PCK (semcorr.eval.pck)."""

from __future__ import annotations

import math

import pytest
import torch

from semcorr.eval.pck import (
    DEFAULT_THRESHOLDS,
    PCKAccumulator,
    bbox_reference,
    format_threshold,
    image_reference,
    keypoint_reference,
    pck_correct,
    per_image_pck,
    per_keypoint_pck,
)


class TestPckCorrect:
    def test_perfect_predictions_are_all_correct(self) -> None:
        gt = torch.rand(7, 2) * 100
        correct = pck_correct(gt.clone(), gt, 50.0)
        assert correct.shape == (7, len(DEFAULT_THRESHOLDS))
        assert correct.all()
        assert per_image_pck(correct).tolist() == [1.0] * 4
        assert per_keypoint_pck(correct).tolist() == [1.0] * 4

    def test_error_exactly_at_threshold_is_wrong(self) -> None:
        # reference 200, alpha 0.05 -> threshold 10 px; errors 10 (3-4-5 triangle x2) and 9.999
        gt = torch.zeros(3, 2)
        pred = torch.tensor([[6.0, 8.0], [9.999, 0.0], [10.001, 0.0]])
        correct = pck_correct(pred, gt, 200.0, [0.05])
        assert correct[:, 0].tolist() == [False, True, False]

    def test_shapes_over_a_grid(self) -> None:
        for batch in [(), (3,), (2, 4)]:
            for n in [0, 1, 5]:
                pred = torch.rand(*batch, n, 2)
                gt = torch.rand(*batch, n, 2)
                out = pck_correct(pred, gt, 1.0, [0.1, 0.2, 0.3])
                assert out.shape == (*batch, n, 3)
                assert out.dtype == torch.bool

    def test_per_keypoint_reference(self) -> None:
        gt = torch.zeros(2, 2)
        pred = torch.tensor([[5.0, 0.0], [5.0, 0.0]])
        reference = torch.tensor([40.0, 60.0])  # thresholds at 0.1: 4 and 6
        assert pck_correct(pred, gt, reference, [0.1])[:, 0].tolist() == [False, True]

    def test_batched_reference(self) -> None:
        gt = torch.zeros(2, 3, 2)
        pred = torch.full((2, 3, 2), 3.0)  # error 4.24
        reference = torch.tensor([[40.0], [50.0]])  # thresholds 4 and 5
        assert pck_correct(pred, gt, reference, [0.1])[..., 0].tolist() == [
            [False] * 3,
            [True] * 3,
        ]

    def test_mismatched_shapes_raise(self) -> None:
        with pytest.raises(ValueError, match="N, 2"):
            pck_correct(torch.zeros(3, 2), torch.zeros(4, 2), 1.0)

    def test_device_and_dtype_from_inputs(self) -> None:
        out = pck_correct(torch.zeros(2, 2, dtype=torch.float16), torch.zeros(2, 2), 1.0)
        assert out.device == torch.device("cpu")


class TestAggregation:
    def test_per_image_and_per_keypoint_differ(self) -> None:
        # pair A: 1 of 1 correct; pair B: 1 of 4 correct.
        # per image = (1 + 0.25) / 2 = 0.625; per keypoint = 2 / 5 = 0.4
        a = torch.tensor([[True]])
        b = torch.tensor([[True], [False], [False], [False]])
        acc = PCKAccumulator([0.1])
        acc.add("x", a)
        acc.add("x", b)
        summary = acc.summary()
        assert summary["pck"]["0.10"]["per_image"] == pytest.approx(0.625)
        assert summary["pck"]["0.10"]["per_keypoint"] == pytest.approx(0.4)
        assert summary["counts"]["all"] == {"pairs": 2, "keypoints": 5}

    def test_per_image_with_visibility_mask(self) -> None:
        correct = torch.tensor([[[True], [False], [True]], [[False], [False], [True]]])
        visible = torch.tensor([[True, True, False], [True, True, True]])
        assert per_image_pck(correct, visible)[:, 0].tolist() == pytest.approx([0.5, 1 / 3])
        assert per_keypoint_pck(correct, visible).tolist() == pytest.approx([2 / 5])

    def test_pair_without_visible_keypoints_is_nan_and_not_counted(self) -> None:
        correct = torch.zeros(2, 1, dtype=torch.bool)
        assert math.isnan(float(per_image_pck(correct, torch.zeros(2, dtype=torch.bool))[0]))
        acc = PCKAccumulator([0.1])
        acc.add("x", torch.zeros(0, 1, dtype=torch.bool))
        summary = acc.summary()
        assert summary["counts"]["all"]["pairs"] == 0
        assert summary["pck"]["0.10"]["per_image"] is None

    def test_average_over_categories_versus_pairs(self) -> None:
        # category a: 3 pairs all right; category b: 1 pair wrong
        acc_pairs, acc_cats = PCKAccumulator([0.1]), PCKAccumulator([0.1], average="categories")
        for acc in (acc_pairs, acc_cats):
            for _ in range(3):
                acc.add("a", torch.tensor([[True]]))
            acc.add("b", torch.tensor([[False]]))
        assert acc_pairs.summary()["pck"]["0.10"]["per_image"] == pytest.approx(0.75)
        assert acc_cats.summary()["pck"]["0.10"]["per_image"] == pytest.approx(0.5)
        per_cat = acc_cats.summary()["per_category"]
        assert per_cat["a"]["0.10"]["per_image"] == 1.0
        assert per_cat["b"]["0.10"]["per_keypoint"] == 0.0

    def test_geo_aware_subset_is_its_own_column(self) -> None:
        acc = PCKAccumulator([0.05, 0.1])
        correct = torch.tensor([[True, True], [False, True], [False, False]])
        acc.add("c", correct, torch.tensor([False, True, True]))
        geo = acc.summary()["geo_aware"]
        assert geo["keypoints"] == 2 and geo["pairs"] == 1
        assert geo["fraction_of_keypoints"] == pytest.approx(2 / 3)
        assert geo["pck"]["0.05"]["per_keypoint"] == 0.0
        assert geo["pck"]["0.10"]["per_keypoint"] == 0.5

    def test_threshold_keys_have_two_decimals(self) -> None:
        acc = PCKAccumulator([0.1, 0.15, 0.2])
        acc.add("x", torch.ones(1, 3, dtype=torch.bool))
        assert list(acc.summary()["pck"]) == ["0.10", "0.15", "0.20"]
        assert format_threshold(0.05) == "0.05"

    def test_bad_arguments(self) -> None:
        with pytest.raises(ValueError):
            PCKAccumulator([0.1], average="median")
        with pytest.raises(ValueError):
            PCKAccumulator([0.1]).add("x", torch.ones(3, 2, dtype=torch.bool))


class TestReferences:
    def test_bbox_reference_is_larger_side(self) -> None:
        boxes = torch.tensor([[10.0, 20.0, 50.0, 30.0], [0.0, 0.0, 5.0, 8.0]])
        assert bbox_reference(boxes).tolist() == [40.0, 8.0]

    def test_image_reference(self) -> None:
        assert image_reference(640, 480) == 640.0

    def test_keypoint_reference_uses_visible_points(self) -> None:
        points = torch.tensor([[0.0, 0.0], [30.0, 10.0], [100.0, 100.0]])
        assert float(keypoint_reference(points)) == 100.0
        visible = torch.tensor([True, True, False])
        assert float(keypoint_reference(points, visible)) == 30.0
        assert math.isnan(float(keypoint_reference(points, torch.zeros(3, dtype=torch.bool))))
