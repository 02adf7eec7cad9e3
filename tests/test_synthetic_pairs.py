"""End to end on real photographs warped by known transforms (issue: the core job).

dense-sift + window soft-argmax must find textured points within 25.6 px in at least 90% of
cases under rotations up to 20°, zooms 0.75–1.25 and brightness/contrast changes; on mirrored
targets, pose alignment must restore at least 85%. 25.6 px is 0.05 x 512: PCK@0.05 on
boat.png and peppers.png (512 x 512), and the stricter PCK@0.02 on brooklyn.png (1280 x 820).
OpenCV's SIFT on a dense grid with nearest-neighbour search, measured in the same test, is the
baseline semcorr must not fall below.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from semcorr import Matcher, create_backbone, load_image
from semcorr.geometry import hflip_matrix, inside_image, similarity_matrix, warp_image, warp_points

ALPHA = 0.05
TOLERANCE = ALPHA * 512  # px, the same for every photo (see the module docstring)
WARPS_PER_PHOTO = 2


def textured_points(image: torch.Tensor, n: int = 25, seed: int = 0) -> torch.Tensor:
    """``n`` points ``(n, 2)`` among the most textured places of the central 70% of ``image``."""
    grey = image.mean(0)
    gx = grey[1:-1, 2:] - grey[1:-1, :-2]
    gy = grey[2:, 1:-1] - grey[:-2, 1:-1]
    energy = F.avg_pool2d((gx**2 + gy**2)[None, None], 15, 1, 7)[0, 0]
    h, w = energy.shape
    gen = torch.Generator().manual_seed(seed)
    ys = torch.randint(int(0.15 * h), int(0.85 * h), (2000,), generator=gen)
    xs = torch.randint(int(0.15 * w), int(0.85 * w), (2000,), generator=gen)
    best = energy[ys, xs].argsort(descending=True)[: 4 * n]
    chosen = best[torch.randperm(4 * n, generator=gen)[:n]]
    return torch.stack([xs[chosen] + 1, ys[chosen] + 1], dim=1).float()


def opencv_dense_sift(source: torch.Tensor, target: torch.Tensor, points: torch.Tensor,
                      step: int = 8, size: float = 32.0) -> torch.Tensor:
    """What a user writes in ten lines: SIFT at the points and on a dense target grid, NN."""
    cv2 = pytest.importorskip("cv2")

    def grey(image: torch.Tensor):  # noqa: ANN202
        return (image.mean(0) * 255).round().byte().numpy()

    sift = cv2.SIFT_create()
    _, d_src = sift.compute(grey(source), [cv2.KeyPoint(x, y, size) for x, y in points.tolist()])
    h, w = target.shape[-2:]
    grid = [(float(x), float(y)) for y in range(0, h, step) for x in range(0, w, step)]
    _, d_tgt = sift.compute(grey(target), [cv2.KeyPoint(x, y, size) for x, y in grid])
    matches = cv2.BFMatcher(cv2.NORM_L2).match(d_src, d_tgt)
    return torch.tensor([grid[m.trainIdx] for m in matches], dtype=torch.float32)


def synthetic_cases(paths: list[Path], mirrored: bool):  # noqa: ANN201
    rng = random.Random(7 if mirrored else 3)
    for path in paths:
        image = load_image(path)
        height, width = image.shape[-2:]
        points = textured_points(image)
        for _ in range(WARPS_PER_PHOTO):
            matrix = similarity_matrix(width, height, rng.uniform(-20, 20), rng.uniform(0.75, 1.25))
            if mirrored:
                matrix = hflip_matrix(width) @ matrix
            target = warp_image(image, matrix, (width, height))
            target = (target * rng.uniform(0.6, 1.3) + rng.uniform(-0.1, 0.1)).clamp(0, 1)
            truth = warp_points(points, matrix)
            keep = inside_image(truth, width, height)
            yield image, target, points[keep], truth[keep]


def pck(predicted: list[torch.Tensor], truth: list[torch.Tensor]) -> float:
    """Fraction of points closer than ``TOLERANCE`` px to the truth."""
    errors = torch.cat([(p - t).norm(dim=1) for p, t in zip(predicted, truth)])
    return float((errors < TOLERANCE).float().mean())


@pytest.mark.slow  # measured 386 s on the loaded 2-core machine (OpenCV's dense grid, pose grid)
def test_dense_sift_on_warped_photographs(photo_paths: list[Path]) -> None:
    """The README's figures, each failing below its claim minus 0.01 (1.5 of 150 points); the
    OpenCV figures within 0.01 either way (measured 0.9867 and 0.1133, below).

    Measured with 1 and with 2 torch threads, identical (fixed warps and points: no seed in the
    test): precise 0.9933, precise + pose 0.9933, semantic 0.9600, OpenCV 0.9867 upright;
    mirrored: precise 0.2800, precise + pose 0.9533, OpenCV 0.1133 -- the README's 0.993, 0.96,
    0.987, 0.28, 0.953, 0.11. One point is 0.0067 here. Other warp seeds were not measured.
    """
    # Same-instance matching: the ``precise`` preset (finer cells at 384 px); the default
    # ``semantic`` preset trades this precision for the context cross-instance matching needs.
    plain = Matcher(create_backbone("dense-sift-precise"), refine="window")
    aligned = Matcher(create_backbone("dense-sift-precise"), refine="window", pose_align=True)
    semantic = Matcher(create_backbone("dense-sift"), refine="window")
    results: dict[str, float] = {}
    for mirrored in (False, True):
        ours, ours_aligned, ours_semantic, baseline, truths = [], [], [], [], []
        for source, target, points, truth in synthetic_cases(photo_paths, mirrored):
            ours.append(plain.match(source, [target], points)[0].points)
            ours_aligned.append(aligned.match(source, [target], points)[0].points)
            if not mirrored:
                ours_semantic.append(semantic.match(source, [target], points)[0].points)
            baseline.append(opencv_dense_sift(source, target, points))
            truths.append(truth)
        tag = "mirrored" if mirrored else "upright"
        results[f"{tag}/semcorr"] = pck(ours, truths)
        results[f"{tag}/semcorr+pose"] = pck(ours_aligned, truths)
        results[f"{tag}/opencv"] = pck(baseline, truths)
        if not mirrored:
            results["upright/semantic"] = pck(ours_semantic, truths)
    print(results)
    claims = {"upright/semcorr": 0.993, "upright/semcorr+pose": 0.993,
              "upright/semantic": 0.96, "mirrored/semcorr+pose": 0.953}
    assert all(results[k] >= claims[k] - 0.01 for k in claims), results
    # the README's OpenCV figures, two-sided: a baseline that moved either way misstates it
    baseline = {"upright/opencv": 0.987, "mirrored/opencv": 0.11}
    assert all(abs(results[k] - baseline[k]) <= 0.01 for k in baseline), results
    assert results["upright/semcorr"] >= results["upright/opencv"]
    assert results["mirrored/semcorr"] < results["mirrored/semcorr+pose"] - 0.3
    assert results["mirrored/semcorr+pose"] >= results["mirrored/opencv"]
