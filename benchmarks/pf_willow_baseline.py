"""PF-Willow, all 900 pairs: semcorr's default against OpenCV dense SIFT + nearest neighbour.

    python benchmarks/pf_willow_baseline.py [--root ../shared/data/pf-willow]

Both methods see the same pairs from semcorr's PF-Willow loader and are scored by the same PCK
function (α · the larger side of the target keypoints' box, strict, per pair then per class).
The OpenCV baseline is what a user writes in ten lines: SIFT descriptors at the source points and
on a 4 px grid of the target at the original resolution, brute-force nearest neighbour.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch

from semcorr import Matcher, create_backbone, load_image
from semcorr.data import create_dataset
from semcorr.eval.pck import pck_correct

REPO = Path(__file__).resolve().parents[1]
ALPHAS = (0.05, 0.10, 0.15)


def opencv_dense_nn(source: np.ndarray, target: np.ndarray, points: np.ndarray,
                    step: int = 4, size: float = 32.0) -> np.ndarray:
    sift = cv2.SIFT_create()
    _, d_src = sift.compute(source, [cv2.KeyPoint(float(x), float(y), size) for x, y in points])
    h, w = target.shape
    grid = np.array([(x, y) for y in range(0, h, step) for x in range(0, w, step)], np.float32)
    _, d_tgt = sift.compute(target, [cv2.KeyPoint(float(x), float(y), size) for x, y in grid])
    return grid[[m.trainIdx for m in cv2.BFMatcher(cv2.NORM_L2).match(d_src, d_tgt)]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared/data/pf-willow")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()

    dataset = create_dataset("pf-willow", args.root)
    matcher = Matcher(create_backbone("dense-sift"), refine="window")

    @lru_cache(maxsize=16)
    def source_features(path: Path):  # noqa: ANN202
        return matcher.source_features(load_image(path))

    @lru_cache(maxsize=16)
    def grey(path: Path) -> np.ndarray:
        return (load_image(path).mean(0) * 255).round().byte().numpy()

    scores: dict[str, dict[str, list[torch.Tensor]]] = {
        "semcorr": defaultdict(list), "opencv": defaultdict(list)
    }
    times = {"semcorr": 0.0, "opencv": 0.0}
    for index, sample in enumerate(dataset):
        if args.limit is not None and index >= args.limit:
            break
        start = time.perf_counter()
        ours = matcher.match(source_features(sample.source_path), [load_image(sample.target_path)],
                             sample.source_points)[0].points
        times["semcorr"] += time.perf_counter() - start
        start = time.perf_counter()
        theirs = torch.from_numpy(opencv_dense_nn(grey(sample.source_path),
                                                  grey(sample.target_path),
                                                  sample.source_points.numpy()))
        times["opencv"] += time.perf_counter() - start
        for name, predicted in (("semcorr", ours), ("opencv", theirs)):
            correct = pck_correct(predicted, sample.target_points, sample.pck_reference, ALPHAS)
            scores[name][sample.category].append(correct.float().mean(0))
    for name, per_class in scores.items():
        per_class_mean = torch.stack([torch.stack(v).mean(0) for v in per_class.values()])
        overall = per_class_mean.mean(0)
        pairs = sum(len(v) for v in per_class.values())
        cells = "  ".join(f"PCK@{a:.2f} {float(v):.3f}" for a, v in zip(ALPHAS, overall))
        print(f"{name:8s} {pairs} pairs  {cells}  ({times[name]:.0f} s)")


if __name__ == "__main__":
    main()
