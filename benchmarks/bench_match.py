"""Time ``Matcher.match`` (1 source x 20 targets x 30 points) against OpenCV dense SIFT + NN.

    python benchmarks/bench_match.py [--targets 20] [--points 30] [--repeats 3]

Both run on the same warped copies of a real photograph in the same process; the script prints
the median wall time of each, their ratio, and the PCK@0.05 of each on the known warps.
OpenCV's baseline is what a user writes in ten lines: SIFT descriptors on a 4 px grid of the
target and at the source points, brute-force nearest neighbour.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from semcorr import Matcher, create_backbone, load_image
from semcorr.geometry import similarity_matrix, warp_image, warp_points

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO.parent / "shared" / "data" / "r2d2" / "boat.png"


def opencv_dense_nn(source: np.ndarray, targets: list[np.ndarray], points: np.ndarray,
                    step: int = 4, size: float = 32.0) -> list[np.ndarray]:
    sift = cv2.SIFT_create()
    _, d_src = sift.compute(source, [cv2.KeyPoint(float(x), float(y), size) for x, y in points])
    h, w = targets[0].shape
    grid = np.array([(x, y) for y in range(0, h, step) for x in range(0, w, step)], np.float32)
    keypoints = [cv2.KeyPoint(float(x), float(y), size) for x, y in grid]
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    found = []
    for target in targets:
        _, d_tgt = sift.compute(target, keypoints)
        matches = matcher.match(d_src, d_tgt)
        found.append(grid[[m.trainIdx for m in matches]])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=20)
    parser.add_argument("--points", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image", type=Path, default=PHOTO)
    args = parser.parse_args()

    image = load_image(args.image)
    height, width = image.shape[-2:]
    rng = random.Random(0)
    matrices = [similarity_matrix(width, height, rng.uniform(-15, 15), rng.uniform(0.8, 1.2))
                for _ in range(args.targets)]
    targets = [warp_image(image, m, (width, height)) for m in matrices]
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(args.points, 2, generator=gen) * torch.tensor([width, height]) * 0.6
    points += torch.tensor([width, height]) * 0.2
    truths = [warp_points(points, m) for m in matrices]

    matcher = Matcher(create_backbone("dense-sift"), refine="window")
    grey = lambda t: (t.mean(0) * 255).round().byte().numpy()  # noqa: E731
    cv_source, cv_targets = grey(image), [grey(t) for t in targets]

    ours_times, cv_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = matcher.match(image, targets, points)
        ours_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        theirs = opencv_dense_nn(cv_source, cv_targets, points.numpy())
        cv_times.append(time.perf_counter() - start)

    def pck(predicted: list[torch.Tensor]) -> float:
        errors = torch.cat([(p - t).norm(dim=1) for p, t in zip(predicted, truths)])
        return float((errors < 0.05 * max(width, height)).float().mean())

    t_ours, t_cv = statistics.median(ours_times), statistics.median(cv_times)
    print(f"1 source x {args.targets} targets x {args.points} points, {width}x{height} px, "
          f"torch threads {torch.get_num_threads()}")
    print(f"semcorr Matcher (dense-sift, window): {t_ours:.2f} s   PCK@0.05 "
          f"{pck([r.points for r in ours]):.3f}")
    print(f"OpenCV dense SIFT + NN              : {t_cv:.2f} s   PCK@0.05 "
          f"{pck([torch.from_numpy(f) for f in theirs]):.3f}")
    print(f"time ratio semcorr / OpenCV: {t_ours / t_cv:.2f}")


if __name__ == "__main__":
    main()
