"""Matching rules: known answers, masking, empty input, batching, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from semcorr.errors import InputError
from semcorr.match import (
    argmax2d,
    create_refiner,
    kernel_soft_argmax2d,
    mutual_nearest_neighbors,
    soft_argmax2d,
    window_soft_argmax2d,
)


def quadratic_peak(h: int, w: int, x0: float, y0: float, sigma: float, temperature: float,
                   offset: float = 0.0) -> torch.Tensor:
    """Scores whose softmax at ``temperature`` is a Gaussian of std ``sigma`` at (x0, y0)."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                            torch.arange(w, dtype=torch.float64), indexing="ij")
    d2 = (xs - x0) ** 2 + (ys - y0) ** 2
    return (offset - d2 / (2 * sigma**2) * temperature)[None, None]


class TestArgmax:
    def test_planted_peak(self) -> None:
        scores = torch.rand(2, 3, 9, 11)
        scores[1, 2, 4, 7] = 5.0
        coords, best = argmax2d(scores)
        assert coords[1, 2].tolist() == [7.0, 4.0]
        assert best[1, 2].item() == 5.0

    def test_mask_excludes_cells(self) -> None:
        scores = torch.zeros(1, 1, 5, 5)
        scores[0, 0, 0, 0] = 1.0
        scores[0, 0, 3, 2] = 0.5
        mask = torch.ones(5, 5, dtype=torch.bool)
        mask[0, 0] = False
        coords, best = argmax2d(scores, mask)
        assert coords[0, 0].tolist() == [2.0, 3.0] and best.item() == 0.5


class TestWindowSoftArgmax:
    @pytest.mark.parametrize(("x0", "y0"), [(10.3, 7.8), (4.55, 12.1), (15.0, 3.49)])
    def test_subpixel_peak(self, x0: float, y0: float) -> None:
        scores = quadratic_peak(20, 24, x0, y0, sigma=1.0, temperature=0.02)
        coords = window_soft_argmax2d(scores, radius=4, temperature=0.02)
        assert torch.allclose(coords[0, 0].double(), torch.tensor([x0, y0], dtype=torch.float64),
                              atol=0.05)
        assert (coords[0, 0].double() - torch.tensor([x0, y0])).abs().max() < 0.05

    def test_all_negative_scores(self) -> None:
        # With multiply-by-zero masking the zeros outside the window would win; -inf does not.
        scores = quadratic_peak(16, 16, 5.4, 9.6, sigma=1.0, temperature=0.02, offset=-0.9)
        assert scores.max() < 0
        coords = window_soft_argmax2d(scores, radius=3, temperature=0.02)
        assert (coords[0, 0] - torch.tensor([5.4, 9.6])).abs().max() < 0.05

    def test_validity_mask_with_negative_scores(self) -> None:
        scores = quadratic_peak(16, 16, 12.2, 3.0, sigma=1.0, temperature=0.02, offset=-0.5)
        scores[..., 10:] = 1.0  # a better but invalid region (padding)
        mask = torch.ones(16, 16, dtype=torch.bool)
        mask[:, 10:] = False
        coords = window_soft_argmax2d(scores, radius=3, temperature=0.02, mask=mask)
        assert coords[0, 0, 0] <= 9.0 + 1e-6  # never inside the masked columns
        _, best = argmax2d(scores, mask)
        assert best.item() < 0

    def test_empty_input(self) -> None:
        scores = torch.zeros(3, 0, 8, 8)
        for rule in (window_soft_argmax2d, soft_argmax2d, kernel_soft_argmax2d):
            assert rule(scores).shape == (3, 0, 2)
        coords, best = argmax2d(scores)
        assert coords.shape == (3, 0, 2) and best.shape == (3, 0)

    def test_batch_equals_loop(self) -> None:
        torch.manual_seed(0)
        scores = torch.randn(4, 5, 12, 10)
        batched = window_soft_argmax2d(scores, radius=2, temperature=0.1)
        looped = torch.stack([
            torch.cat([window_soft_argmax2d(scores[b : b + 1, n : n + 1], 2, 0.1)
                       for n in range(5)], dim=1)[0]
            for b in range(4)
        ])
        assert torch.allclose(batched, looped, atol=1e-6)

    def test_gradcheck(self) -> None:
        torch.manual_seed(0)
        scores = torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda s: window_soft_argmax2d(s, radius=2, temperature=0.5), (scores,)
        )


class TestSoftArgmax:
    def test_symmetric_distribution_mean(self) -> None:
        scores = quadratic_peak(31, 31, 15.0, 15.0, sigma=2.0, temperature=1.0)
        coords = soft_argmax2d(scores, temperature=1.0)
        assert (coords[0, 0] - torch.tensor([15.0, 15.0])).abs().max() < 1e-4

    def test_gradcheck(self) -> None:
        torch.manual_seed(1)
        scores = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda s: soft_argmax2d(s, temperature=0.3), (scores,))
        assert torch.autograd.gradcheck(
            lambda s: kernel_soft_argmax2d(s, sigma=1.5, temperature=0.3), (scores,)
        )


class TestKernelSoftArgmax:
    def test_known_answer_against_direct_formula(self) -> None:
        torch.manual_seed(2)
        scores = torch.rand(1, 1, 7, 9) - 0.5  # negative values included
        sigma, temperature = 1.5, 0.1
        coords = kernel_soft_argmax2d(scores, sigma=sigma, temperature=temperature)
        # direct: softmax, times Gaussian around the argmax, renormalised, mean position
        flat = scores.flatten()
        peak = int(flat.argmax())
        py, px = divmod(peak, 9)
        ys, xs = torch.meshgrid(torch.arange(7.0), torch.arange(9.0), indexing="ij")
        p = torch.softmax(flat / temperature, 0).view(7, 9)
        p = p * torch.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2 * sigma**2))
        p = p / p.sum()
        expected = torch.tensor([(p * xs).sum(), (p * ys).sum()])
        assert torch.allclose(coords[0, 0], expected, atol=1e-5)

    def test_score_weighting_known_answer(self) -> None:
        # SD4Match's rule: the Gaussian multiplies the similarities, then the softmax
        scores = torch.tensor([[[[0.2, -0.4, 0.9], [0.1, 0.8, -0.3]]]])  # peak at x=2, y=0
        sigma, temperature = 1.0, 0.5
        g = [[math.exp(-((x - 2) ** 2 + y**2) / 2) for x in range(3)] for y in range(2)]
        logits = [[scores[0, 0, y, x].item() * g[y][x] / temperature for x in range(3)]
                  for y in range(2)]
        weights = [[math.exp(v) for v in row] for row in logits]
        total = sum(map(sum, weights))
        expected = [sum(w * x for row in weights for x, w in enumerate(row)) / total,
                    sum(w * y for y, row in enumerate(weights) for w in row) / total]
        coords = kernel_soft_argmax2d(scores, sigma, temperature, weighting="score")
        assert coords[0, 0].tolist() == pytest.approx(expected, abs=1e-6)
        # differs from the probability weighting on the same scores
        other = kernel_soft_argmax2d(scores, sigma, temperature)
        assert (other - coords).abs().max() > 1e-3

    def test_score_weighting_respects_the_mask(self) -> None:
        scores = torch.randn(1, 2, 5, 5, generator=torch.Generator().manual_seed(5))
        mask = torch.ones(5, 5, dtype=torch.bool)
        mask[:, 3:] = False
        coords = kernel_soft_argmax2d(scores, 0.3, 0.04, mask, weighting="score")
        assert torch.isfinite(coords).all() and (coords[..., 0] <= 2 + 1e-6).all()

    def test_unknown_weighting(self) -> None:
        with pytest.raises(InputError, match="weighting"):
            kernel_soft_argmax2d(torch.zeros(1, 1, 2, 2), weighting="logit")

    def test_far_outlier_is_suppressed(self) -> None:
        scores = quadratic_peak(30, 30, 8.0, 8.0, 1.0, 0.05)
        scores[..., 25, 25] = scores.max() - 1e-3  # almost as good, far away
        coords = kernel_soft_argmax2d(scores.float(), sigma=2.0, temperature=0.05)
        assert (coords[0, 0] - torch.tensor([8.0, 8.0])).abs().max() < 0.05


class TestMutualNearestNeighbors:
    def test_known_answer(self) -> None:
        sim = torch.tensor([[[0.9, 0.1, 0.0], [0.8, 0.2, 0.1], [0.0, 0.1, 0.7]]])
        m0, m1 = mutual_nearest_neighbors(sim)
        assert m0.tolist() == [[0, -1, 2]]
        assert m1.tolist() == [[0, -1, 2]]

    def test_threshold_and_empty(self) -> None:
        sim = torch.tensor([[[0.9, 0.1], [0.0, 0.3]]])
        m0, _ = mutual_nearest_neighbors(sim, min_similarity=0.5)
        assert m0.tolist() == [[0, -1]]
        m0, m1 = mutual_nearest_neighbors(torch.zeros(2, 0, 5))
        assert m0.shape == (2, 0) and (m1 == -1).all()

    def test_consistency(self) -> None:
        torch.manual_seed(3)
        sim = torch.randn(3, 20, 30)
        m0, m1 = mutual_nearest_neighbors(sim)
        for b in range(3):
            for i, j in enumerate(m0[b].tolist()):
                if j >= 0:
                    assert m1[b, j].item() == i


@pytest.mark.parametrize("name", ["argmax", "soft", "window", "kernel"])
def test_module_equals_function(name: str) -> None:
    torch.manual_seed(4)
    scores = torch.randn(2, 3, 8, 8)
    refiner = create_refiner(name)
    coords, best = refiner(scores)
    functions = {
        "argmax": lambda s: argmax2d(s)[0],
        "soft": lambda s: soft_argmax2d(s, 0.02),
        "window": lambda s: window_soft_argmax2d(s, 3, 0.02),
        "kernel": lambda s: kernel_soft_argmax2d(s, 3.0, 0.04),
    }
    assert torch.allclose(coords, functions[name](scores))
    assert torch.allclose(best, scores.flatten(2).max(-1).values)


def test_precomputed_target_features_give_the_same_answer() -> None:
    from semcorr import Matcher, create_backbone
    from semcorr.io import load_image
    from semcorr.samples import load_samples

    samples = load_samples()
    matcher = Matcher(create_backbone("dense-sift"), pose_align=True)
    source = load_image(samples.source)
    target = load_image(samples.targets[1])
    direct = matcher.match(source, [target], samples.points)[0]
    cached = matcher.target_features(target)
    mixed = matcher.match(source, [cached, target], samples.points)
    for result in mixed:
        assert torch.allclose(result.points, direct.points, atol=1e-5)
        assert result.pose == direct.pose == "hflip"
