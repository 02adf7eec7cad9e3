"""The named PCK protocols on hand-made pairs, exactly at the threshold where ``<`` and ``<=``
differ (semcorr.eval.protocols)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from semcorr.data.base import PairDataset, PairSample
from semcorr.errors import UnknownNameError
from semcorr.eval.benchmark import compute_metrics
from semcorr.eval.pck import PCKStatistics, pck_correct
from semcorr.eval.protocols import (
    StretchedPair,
    default_protocol,
    get_protocol,
    list_protocols,
    padded_points,
)
from semcorr.geometry import ResizePad, Stretch


def pair(target_size: tuple[int, int] = (512, 256), box: list[float] | None = None,
         target_points: list[list[float]] | None = None, reference: float = 0.0) -> PairSample:
    """A one-category pair whose target is ``target_size`` (w, h)."""
    points = torch.tensor(target_points or [[100.0, 50.0]])
    n = points.shape[0]
    return PairSample(
        source_path=Path("s.jpg"), target_path=Path("t.jpg"), source_points=points.clone(),
        target_points=points, visible=torch.ones(n, dtype=torch.bool), category="cat",
        source_bbox=None, target_bbox=None if box is None else torch.tensor(box),
        source_size=target_size, target_size=target_size, pck_reference=reference,
        keypoint_ids=torch.arange(n), flip_permutation=torch.full((n,), -1), pair_id="p",
    )


class _Named(PairDataset):
    def __init__(self, name: str, normalisation: str, average: str = "pairs") -> None:
        self.name = name
        self.protocol = {"normalisation": normalisation, "average": average}


def test_registry_and_dataset_defaults() -> None:
    assert list_protocols() == ["foundation-finetune", "generalisation", "geoaware", "marco",
                                "pf", "sd4match", "soco", "spair-u"]
    assert default_protocol("soco") == "soco" and default_protocol("mp100") == "marco"
    assert [default_protocol(d) for d in ("spair", "spair-71k", "ap10k", "cub", "pf-pascal",
                                          "pf-willow")] == ["geoaware"] * 4 + ["pf"] * 2
    with pytest.raises(UnknownNameError, match="unknown PCK protocol 'nope'"):
        get_protocol("nope")


def test_inclusive_and_float32_comparison_at_the_threshold() -> None:
    gt = torch.zeros(1, 2)
    pred = torch.tensor([[6.0, 8.0]])  # distance 10 = 0.05 * 200
    assert pck_correct(pred, gt, 200.0, [0.05])[0, 0].item() is False
    assert pck_correct(pred, gt, 200.0, [0.05], inclusive=True)[0, 0].item() is True
    # 0.1 * 300 in float32 rounds to 30 exactly; 30.0000005 (float64) is beyond it in float64
    # but is 30 in float32, where SD4Match compares
    far = torch.tensor([[30.0000005, 0.0]], dtype=torch.float64)
    assert pck_correct(far, gt, 300.0, [0.1], inclusive=True)[0, 0].item() is False
    assert pck_correct(far, gt, 300.0, [0.1], inclusive=True,
                       dtype=torch.float32)[0, 0].item() is True


def test_geoaware_and_pf_are_strict_on_the_dataset_reference() -> None:
    gt = torch.tensor([[100.0, 50.0]])
    at = torch.tensor([[106.0, 58.0]])  # 10 px away
    for name, reference in (("geoaware", 200.0), ("pf", 200.0)):
        protocol = get_protocol(name)
        assert protocol.original_reference(pair(reference=reference)) == reference
        assert protocol.correct(at, gt, reference, [0.05])[0, 0].item() is False
        assert protocol.correct(at, gt, reference, [0.0501])[0, 0].item() is True
    willow = _Named("pf-willow", "keypoints", "categories")
    assert get_protocol("pf").averaging(willow) == "categories"
    assert get_protocol("geoaware").averaging(willow) == "pairs"
    assert get_protocol("sd4match").averaging(willow) == "pairs"


def test_foundation_finetune_box_then_image_fallback() -> None:
    protocol = get_protocol("foundation-finetune")
    assert protocol.thresholds == (0.05, 0.10, 0.15, 0.20)
    boxed = pair(box=[40.0, 20.0, 240.0, 120.0], reference=999.0)
    assert protocol.original_reference(boxed) == 200.0  # the box's larger side, not the dataset's
    unboxed = pair(target_size=(512, 256), reference=999.0)
    assert protocol.original_reference(unboxed) == 512.0  # the image's larger side
    gt = torch.tensor([[100.0, 50.0]])
    assert protocol.correct(torch.tensor([[106.0, 58.0]]), gt, 200.0, [0.05])[0, 0].item()
    assert protocol.correct(gt + torch.tensor([[25.6, 0.0]]), gt, 512.0, [0.05])[0, 0].item()
    assert not protocol.correct(gt + torch.tensor([[25.61, 0.0]]), gt, 512.0,
                                [0.05])[0, 0].item()


class TestSD4MatchProtocol:
    """Target 512 x 256 → 768²: x · 1.5, y · 3 (exact in float32)."""

    protocol = get_protocol("sd4match")

    def stretched(self, **kwargs: object) -> StretchedPair:
        return StretchedPair(self.protocol, pair(**kwargs), input_size=768, grid=48)

    def test_box_reference_and_inclusive_comparison_in_the_stretched_frame(self) -> None:
        s = self.stretched(box=[40.0, 20.0, 240.0, 120.0], reference=200.0)
        rows = torch.arange(1)
        assert s.reference("bbox", rows) == 300.0  # box [60, 60, 360, 360]
        gt = s.points(torch.tensor([[100.0, 50.0]]), s.target)
        assert gt.tolist() == [[150.0, 150.0]] and gt.dtype == torch.float32
        at = gt + torch.tensor([[18.0, 24.0]])  # 30 px = 0.1 · 300
        assert self.protocol.correct(at, gt, 300.0, [0.1])[0, 0].item() is True
        assert get_protocol("geoaware").correct(at, gt, 300.0, [0.1])[0, 0].item() is False
        beyond = gt + torch.tensor([[18.0, 24.01]])
        assert self.protocol.correct(beyond, gt, 300.0, [0.1])[0, 0].item() is False

    def test_image_and_keypoint_references(self) -> None:
        s = self.stretched(target_points=[[10.0, 10.0], [110.0, 30.0]])
        rows = torch.arange(2)
        assert s.reference("image", rows) == 768.0
        # extent (100 · 1.5, 20 · 3) = (150, 60)
        assert s.reference("keypoints", rows) == 150.0

    def test_keypoints_are_clamped_inside_the_frame(self) -> None:
        s = self.stretched()
        clamped = s.points(torch.tensor([[0.0, 255.9], [511.9, -1.0], [200.0, 100.0]]), s.target)
        expected = torch.tensor([[1e-4, 767 - 1e-4], [767 - 1e-4, 1e-4], [300.0, 300.0]],
                                dtype=torch.float32)
        assert torch.equal(clamped, expected)

    def test_cells_span_the_frame_corner_to_corner(self) -> None:
        s = self.stretched()
        frame = torch.tensor([[0.0, 767.0], [383.5, 100.0]])
        matcher_px = s.to_matcher(frame)
        cells = ResizePad(768, 768, 768, 16).to_grid(matcher_px)  # what the Matcher samples
        assert torch.allclose(cells, frame / 767 * 47, atol=1e-5)
        assert torch.allclose(s.from_matcher(matcher_px), frame, atol=1e-4)

    def test_stretch_ignores_the_aspect_ratio(self) -> None:
        image = torch.rand(1, 3, 256, 512)
        out = Stretch(512, 256, 96).apply(image)
        assert out.shape == (1, 3, 96, 96)
        flat = torch.ones(1, 3, 256, 512)  # no padding: a constant image stays constant
        assert torch.allclose(Stretch(512, 256, 96).apply(flat), torch.ones(1, 3, 96, 96))


def test_rules_are_recorded_in_words() -> None:
    spair = _Named("spair", "bbox")
    rules = get_protocol("sd4match").rules(spair)
    assert rules["name"] == "sd4match" and rules["comparison"] == "distance <= alpha * reference"
    assert rules["precision"] == "float32" and "768x768" in rules["frame"]
    assert "box" in rules["reference"] and rules["average"] == "pairs"
    assert get_protocol("pf").rules(_Named("pf-willow", "keypoints", "categories"))[
        "per_image"].endswith("then mean over categories")


def test_statistics_hand_computed() -> None:
    stats = PCKStatistics([0.1])
    stats.add("cat", torch.tensor([[True], [False]]), {"truncation": 0})
    stats.add("dog", torch.tensor([[True]]), {"truncation": 1})
    out = stats.summary()
    overall = out["overall"]
    assert (overall["pairs"], overall["keypoints"]) == (2, 3)
    assert overall["per_image"]["0.10"] == {"mean": 0.75, "std": 0.25}
    assert overall["per_keypoint"]["0.10"]["mean"] == pytest.approx(2 / 3)
    assert overall["per_keypoint"]["0.10"]["std"] == pytest.approx(math.sqrt(2 / 9))
    assert out["by_category"]["cat"]["per_image"]["0.10"] == {"mean": 0.5, "std": 0.0}
    assert out["by_difficulty"]["truncation"]["1"]["per_keypoint"]["0.10"]["mean"] == 1.0


def test_compute_metrics_applies_the_protocol(tmp_path: Path) -> None:
    """One pair with one keypoint exactly at 0.05 · 200: counted by the inclusive protocols."""
    record = {"pair_id": "a", "category": "cat", "reference": 200.0, "gt": [[0.0, 0.0]],
              "pred": [[6.0, 8.0]], "geo_aware": [False], "keypoint_ids": [0],
              "extra": {"viewpoint_variation": 2}}
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps(record) + "\n")
    numbers = {name: compute_metrics(path, None, [0.05], protocol=get_protocol(name))
               for name in list_protocols()}
    assert {n: r["pck"]["0.05"]["per_image"] for n, r in numbers.items()} == {
        "foundation-finetune": 1.0, "geoaware": 0.0, "pf": 0.0, "sd4match": 1.0,
        "generalisation": 0.0, "spair-u": 0.0, "marco": 1.0, "soco": 0.0}
    stats = numbers["foundation-finetune"]["statistics"]
    assert stats["by_difficulty"]["viewpoint_variation"]["2"]["per_keypoint"]["0.05"][
        "mean"] == 1.0
    assert "statistics" not in numbers["geoaware"]


def test_soco_whole_pixels_strict_and_any_target_by_hand(tmp_path: Path) -> None:
    """``soco``: ground truth truncated, scaled to 798 and truncated again (57.9 -> 57 ->
    57 * 798 / 200 = 227.43 -> 227; 10.2 -> 10 -> 39.9 -> 39), in units of the square; strict
    ``<``; a row with several targets is right when any of them is within reach."""
    assert padded_points(torch.tensor([[57.9, 10.2]]), (200, 100), 798).tolist() == [
        [torch.tensor(227 / 798, dtype=torch.float32).item(),
         torch.tensor(39 / 798, dtype=torch.float32).item()]]
    record = {"pair_id": "p", "category": "car", "reference": 1.25, "geo_aware": [False] * 2,
              "pred": [[0.5, 0.625], [0.5, 0.625]], "gt": [[0.5, 0.5], [0.0, 0.0]],
              "gt_any": [[[0.5, 0.5]], [[0.0, 0.0], [0.5, 0.5625]]]}
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps(record) + "\n")
    pck = compute_metrics(path, None, [0.05, 0.1, 0.15], protocol=get_protocol("soco"))["pck"]
    # row 1: 0.125 from its target, = 0.1 * 1.25 (out), < 0.15 * 1.25; row 2: 0.0625 from its
    # second target: in at 0.1 (< 0.125) and 0.15, out at 0.05 (not < 0.0625)
    assert [pck[a]["per_keypoint"] for a in ("0.05", "0.10", "0.15")] == [0.0, 0.5, 1.0]
