"""MMA and repeatability on homography pairs: hand-computable cases and the Graffiti pairs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from semcorr.errors import InputError
from semcorr.eval.homography import (
    DEFAULT_THRESHOLDS,
    evaluate_pair,
    evaluate_sequence,
    match_descriptors,
    matching_accuracy,
    mean_matching_accuracy,
    read_homography,
    repeatability,
    reprojection_errors,
    warp_points,
)
from shared_data import shared_path

SHIFT = torch.tensor([[1.0, 0, 3], [0, 1, -2], [0, 0, 1]], dtype=torch.float64)


class TestWarpPoints:
    def test_known_answers(self) -> None:
        points = torch.tensor([[0.0, 0.0], [10.0, 5.0]])
        torch.testing.assert_close(
            warp_points(points, SHIFT), torch.tensor([[3.0, -2.0], [13.0, 3.0]])
        )
        scale = torch.diag(torch.tensor([2.0, 2.0, 1.0], dtype=torch.float64))
        torch.testing.assert_close(warp_points(points, scale), 2 * points)
        projective = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0.1, 0, 1]], dtype=torch.float64)
        torch.testing.assert_close(warp_points(points, projective)[1], torch.tensor([5.0, 2.5]))

    def test_batched_and_dtype(self) -> None:
        points = torch.rand(2, 7, 2, dtype=torch.float64)
        h = torch.stack([SHIFT, torch.eye(3, dtype=torch.float64)])
        out = warp_points(points, h)
        assert out.shape == (2, 7, 2) and out.dtype == torch.float64
        torch.testing.assert_close(out[1], points[1])

    def test_inverse(self) -> None:
        h = torch.tensor(
            [[0.9, 0.3, -39.0], [-0.18, 0.94, 153.0], [2e-4, -1.6e-5, 1.0]], dtype=torch.float64
        )
        points = torch.rand(50, 2, dtype=torch.float64) * 600
        back = warp_points(warp_points(points, h), torch.linalg.inv(h))
        torch.testing.assert_close(back, points)


class TestAccuracy:
    def test_hand_computed(self) -> None:
        errors = torch.tensor([0.5, 1.0, 2.5, 7.0])
        acc = matching_accuracy(errors, (1, 2, 3, 10))
        assert acc.tolist() == [0.5, 0.5, 0.75, 1.0]  # thresholds are inclusive

    def test_no_match_is_zero(self) -> None:
        assert matching_accuracy(torch.zeros(0)).tolist() == [0.0] * len(DEFAULT_THRESHOLDS)

    def test_mean_over_pairs(self) -> None:
        mean = mean_matching_accuracy([torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5])])
        assert mean.tolist() == [0.75, 0.25]
        with pytest.raises(InputError):
            mean_matching_accuracy([])

    def test_reprojection_errors(self) -> None:
        kp0 = torch.tensor([[0.0, 0.0, 1.0], [5.0, 5.0, 1.0], [1.0, 1.0, 1.0]])
        kp1 = torch.tensor([[3.0, -2.0], [8.0, 7.0]])
        matches = torch.tensor([0, 1, -1])
        errors = reprojection_errors(kp0, kp1, matches, SHIFT)
        torch.testing.assert_close(errors, torch.tensor([0.0, 4.0]))

    def test_match_descriptors_mutual(self) -> None:
        d0 = torch.eye(4)[:3]
        d1 = torch.eye(4)[[2, 0, 3]]
        assert match_descriptors(d0, d1).tolist() == [1, -1, 0]
        assert match_descriptors(d0, torch.zeros(0, 4)).tolist() == [-1, -1, -1]

    def test_evaluate_pair_perfect(self) -> None:
        torch.manual_seed(0)
        kp0 = torch.rand(30, 2) * 100
        desc = F.normalize(torch.randn(30, 16), dim=1)
        perm = torch.randperm(30)
        kp1 = warp_points(kp0, SHIFT)[perm]
        result = evaluate_pair(
            {"keypoints": kp0, "descriptors": desc},
            {"keypoints": kp1, "descriptors": desc[perm]},
            SHIFT,
        )
        assert result.num_matches == 30 and result.accuracy.tolist() == [1.0] * 10
        shifted = evaluate_pair(
            {"keypoints": kp0, "descriptors": desc},
            {"keypoints": kp1 + torch.tensor([2.0, 0.0]), "descriptors": desc[perm]},
            SHIFT,
        )
        assert shifted.accuracy.tolist() == [0.0] + [1.0] * 9


class TestRepeatability:
    def test_hand_computed(self) -> None:
        kp0 = torch.tensor([[0.0, 0.0], [5.0, 5.0], [50.0, 50.0], [2.0, 2.0]])
        kp1 = torch.tensor([[3.0, -1.0], [8.0, 7.0], [0.0, 0.0]])
        # mapped: (3, -2) outside a 20x20 image; (8, 3) is 4 px from (8, 7); (53, 48) outside;
        # (5, 0) is 2.24 px from (3, -1)
        assert repeatability(kp0, kp1, SHIFT, (20, 20), 3.0) == pytest.approx(0.5)
        assert repeatability(kp0, kp1, SHIFT, (20, 20), 4.0) == pytest.approx(1.0)
        assert repeatability(kp0, kp1[:0], SHIFT, (20, 20)) == 0.0


class TestFiles:
    def test_read_homography(self, tmp_path: Path) -> None:
        path = tmp_path / "H"
        path.write_text("1 0 3\n0 1 -2\n0 0 1\n")
        torch.testing.assert_close(read_homography(path), SHIFT)
        path.write_text("1 0 3\n0 1\n")
        with pytest.raises(InputError, match="H: a homography file holds nine finite"):
            read_homography(path)
        path.write_text("a b c")
        with pytest.raises(InputError, match="H: a homography file holds nine numbers"):
            read_homography(path)
        with pytest.raises(InputError, match="nope: no such homography file"):
            read_homography(tmp_path / "nope")

    def test_graffiti_homographies_are_sane(self) -> None:
        root = shared_path("homography", "graffiti")
        for k in range(2, 7):
            h = read_homography(root / f"H1to{k}p")
            assert h[2, 2] == pytest.approx(1.0) and torch.linalg.det(h).abs() > 0.1

    def test_sequence_with_fake_extractor(self, tmp_path: Path) -> None:
        """A fake extractor that returns exact keypoints gives MMA 1 on a synthetic sequence."""
        from PIL import Image

        for k in (1, 2):
            Image.new("RGB", (8, 8)).save(tmp_path / f"img{k}.png")
        (tmp_path / "H1to2p").write_text("1 0 3\n0 1 -2\n0 0 1\n")
        kp0 = torch.rand(20, 2) * 8
        desc = F.normalize(torch.randn(20, 8), dim=1)

        def extract(path: Path) -> dict[str, torch.Tensor]:
            kps = kp0 if path.stem == "img1" else warp_points(kp0, SHIFT)
            return {"keypoints": kps, "descriptors": desc}

        results, mma = evaluate_sequence(extract, tmp_path, targets=(2,))
        assert results[0].name == "1-2" and mma.tolist() == [1.0] * 10
        with pytest.raises(InputError, match="H1to3p: no such homography file"):
            evaluate_sequence(extract, tmp_path, targets=(3,))
        (tmp_path / "H1to3p").write_text("1 0 0\n0 1 0\n0 0 1\n")
        with pytest.raises(InputError, match="no image img3"):
            evaluate_sequence(extract, tmp_path, targets=(3,))


def _graffiti_mma3(model_name: str, weights: str) -> list[float]:
    """MMA@3 on Graffiti 1-2 and 1-3 of the published weights ``weights`` (../shared)."""
    from semcorr.features.local import create_local_features
    from semcorr.io import load_image

    model = create_local_features(model_name, weights=str(shared_path("r2d2", weights)))
    results, _ = evaluate_sequence(
        lambda p: model.extract(load_image(p)),
        shared_path("homography", "graffiti"),
        targets=(2, 3),
    )
    return [float(result.accuracy[2]) for result in results]


@pytest.mark.slow
def test_graffiti_mma_published_weights() -> None:
    """MMA@3 of r2d2_WASF_N16 (5000 keypoints, multi-scale 256-1024) on Graffiti 1-2 and 1-3:
    the README's table (0.807, 0.634), each pair failing below its claim minus 0.01.

    Measured with 1 and with 2 torch threads, identical: 623/772 = 0.8070 and 331/522 = 0.6341
    correct matches, the README's figures; the model is deterministic, so there is no seed.
    0.01 is 8 and 5 matches. The bounds were 0.75 and 0.55 before (and 0.65 on the mean,
    implied by the two now).
    """
    measured = _graffiti_mma3("r2d2", "r2d2_WASF_N16.pt")
    assert measured[0] >= 0.807 - 0.01, measured
    assert measured[1] >= 0.634 - 0.01, measured


@pytest.mark.slow
def test_graffiti_mma_published_fast_r2d2_weights() -> None:
    """The README's Fast-R2D2 row: MMA@3 of faster2d2_WASF_N16 on Graffiti 1-2 and 1-3 under the
    same extraction as :func:`test_graffiti_mma_published_weights`, each pair failing below its
    claim (0.781, 0.586) minus 0.01. The figures were in the README without a guard before."""
    measured = _graffiti_mma3("faster2d2", "faster2d2_WASF_N16.pt")
    assert measured[0] >= 0.781 - 0.01, measured
    assert measured[1] >= 0.586 - 0.01, measured
