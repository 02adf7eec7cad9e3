"""Stage 4: sparse matching on image pairs related by a known homography (HPatches protocol).

Mean matching accuracy (MMA) at threshold ``t``: the keypoints of image A are matched to those
of image B by mutual nearest neighbours on descriptors; a match is correct when the keypoint of
A, mapped by the ground-truth homography, lands within ``t`` pixels (``<=``) of its partner in
B. MMA is the fraction of correct matches per pair, averaged over pairs (a pair without any
match counts as 0).

Homographies map pixel coordinates of A to those of B in the frame of
:mod:`semcorr.conventions` ((0, 0) = centre of the top-left pixel), as the Oxford/HPatches
files do.

Run the Graffiti evaluation::

    python -m semcorr.eval.homography ../shared/data/homography/graffiti \\
        --model r2d2 --weights ../shared/data/r2d2/r2d2_WASF_N16.pt --pairs 2 3
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from semcorr.conventions import UNMATCHED, check_shape
from semcorr.errors import InputError
from semcorr.match.rules import mutual_nearest_neighbors

__all__ = [
    "DEFAULT_THRESHOLDS",
    "PairResult",
    "evaluate_pair",
    "evaluate_sequence",
    "match_descriptors",
    "matching_accuracy",
    "mean_matching_accuracy",
    "read_homography",
    "reprojection_errors",
    "repeatability",
    "warp_points",
]

#: The HPatches thresholds, 1 to 10 pixels.
DEFAULT_THRESHOLDS = tuple(range(1, 11))


def read_homography(path: str | os.PathLike[str]) -> torch.Tensor:
    """A 3x3 homography from a whitespace-separated text file → ``(3, 3)`` float64.

    Raises:
        InputError: naming the file, when it is missing or not nine finite numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such homography file")
    try:
        values = [float(v) for v in path.read_text().split()]
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{path}: a homography file holds nine numbers") from None
    if len(values) != 9 or not all(np.isfinite(values)):
        raise InputError(f"{path}: a homography file holds nine finite numbers, got {values}")
    return torch.tensor(values, dtype=torch.float64).view(3, 3)


def warp_points(points: torch.Tensor, homography: torch.Tensor) -> torch.Tensor:
    """Map points by a homography.

    Args:
        points: ``(..., N, 2)`` (x, y).
        homography: ``(3, 3)`` or ``(..., 3, 3)`` broadcastable with the points' batch dims.

    Returns:
        ``(..., N, 2)`` in the points' dtype (computed in float64). Points mapped to infinity
        come back as ``inf``/``nan``.
    """
    h = homography.to(device=points.device, dtype=torch.float64)
    p = points.to(torch.float64)
    ones = torch.ones_like(p[..., :1])
    mapped = torch.cat([p, ones], dim=-1) @ h.transpose(-1, -2)
    return (mapped[..., :2] / mapped[..., 2:3]).to(points.dtype)


def match_descriptors(
    descriptors0: torch.Tensor, descriptors1: torch.Tensor
) -> torch.Tensor:
    """Mutual nearest neighbours of two descriptor sets (cosine similarity).

    Args:
        descriptors0: ``(N, D)`` L2-normalised.
        descriptors1: ``(M, D)`` L2-normalised.

    Returns:
        ``(N,)`` index into M of each mutual match, ``-1`` when unmatched.
    """
    check_shape(descriptors0, "N D", "descriptors0")
    check_shape(descriptors1, "M D", "descriptors1")
    similarity = descriptors0 @ descriptors1.t()
    return mutual_nearest_neighbors(similarity[None])[0][0]


def reprojection_errors(
    keypoints0: torch.Tensor,
    keypoints1: torch.Tensor,
    matches0: torch.Tensor,
    homography: torch.Tensor,
) -> torch.Tensor:
    """Distance between each matched keypoint of A mapped into B and its partner.

    Args:
        keypoints0: ``(N, 2+)`` (x, y, ...) in A.
        keypoints1: ``(M, 2+)`` in B.
        matches0: ``(N,)`` index into M or ``-1``.
        homography: ``(3, 3)`` from A to B.

    Returns:
        ``(K,)`` errors in pixels of the K matched keypoints, in order of ``keypoints0``.
    """
    valid = matches0 != UNMATCHED
    projected = warp_points(keypoints0[valid, :2], homography)
    return (projected - keypoints1[matches0[valid], :2].to(projected.dtype)).norm(dim=-1)


def matching_accuracy(
    errors: torch.Tensor, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> torch.Tensor:
    """Fraction of matches whose error is at most each threshold.

    Args:
        errors: ``(K,)`` reprojection errors.
        thresholds: ``T`` thresholds in pixels.

    Returns:
        ``(T,)`` float64; zeros when ``K = 0``.
    """
    t = torch.as_tensor(thresholds, dtype=torch.float64, device=errors.device)
    if errors.numel() == 0:
        return torch.zeros_like(t)
    correct = errors.to(torch.float64)[:, None] <= t[None]
    return correct.to(torch.float64).mean(dim=0)


def mean_matching_accuracy(per_pair: Sequence[torch.Tensor]) -> torch.Tensor:
    """Average of per-pair accuracies ``(T,)`` → ``(T,)``."""
    if not per_pair:
        raise InputError("no pairs to average")
    return torch.stack([p.to(torch.float64) for p in per_pair]).mean(dim=0)


def repeatability(
    keypoints0: torch.Tensor,
    keypoints1: torch.Tensor,
    homography: torch.Tensor,
    size1: tuple[int, int],
    threshold: float = 3.0,
) -> float:
    """Fraction of A's keypoints that land inside B with a B keypoint within ``threshold`` px.

    Args:
        keypoints0: ``(N, 2+)`` in A.
        keypoints1: ``(M, 2+)`` in B.
        homography: ``(3, 3)`` from A to B.
        size1: ``(width, height)`` of B.
        threshold: distance in pixels (``<=``).

    Returns:
        The fraction over A's keypoints visible in B (0 when none is).
    """
    projected = warp_points(keypoints0[:, :2], homography).to(torch.float64)
    w, h = size1
    inside = (
        (projected[:, 0] >= -0.5) & (projected[:, 0] <= w - 0.5)
        & (projected[:, 1] >= -0.5) & (projected[:, 1] <= h - 0.5)
    )
    if not bool(inside.any()) or keypoints1.shape[0] == 0:
        return 0.0
    distances = torch.cdist(projected[inside], keypoints1[:, :2].to(torch.float64))
    return float((distances.min(dim=1).values <= threshold).double().mean())


@dataclass
class PairResult:
    """Evaluation of one pair: ``accuracy`` ``(T,)``, match and keypoint counts."""

    name: str
    accuracy: torch.Tensor
    num_matches: int
    num_keypoints: tuple[int, int]


def evaluate_pair(
    features0: dict[str, torch.Tensor],
    features1: dict[str, torch.Tensor],
    homography: torch.Tensor,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    name: str = "",
) -> PairResult:
    """MMA of one pair from extracted features (``keypoints`` and ``descriptors``)."""
    matches0 = match_descriptors(features0["descriptors"], features1["descriptors"])
    errors = reprojection_errors(features0["keypoints"], features1["keypoints"], matches0,
                                 homography)
    return PairResult(name, matching_accuracy(errors, thresholds), int(errors.numel()),
                      (int(features0["keypoints"].shape[0]), int(features1["keypoints"].shape[0])))


def evaluate_sequence(
    extract: Callable[[Path], dict[str, torch.Tensor]],
    root: str | os.PathLike[str],
    targets: Sequence[int] = (2, 3, 4, 5, 6),
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> tuple[list[PairResult], torch.Tensor]:
    """MMA of ``img1`` against ``img<k>`` of an Oxford/HPatches-style folder.

    Args:
        extract: image path → features (``keypoints`` ``(N, 2+)``, ``descriptors`` ``(N, D)``).
        root: folder with ``img1.<ext>``, ``img<k>.<ext>`` and ``H1to<k>p``.
        targets: the ``k`` to evaluate.
        thresholds: in pixels.

    Returns:
        Per-pair results and the MMA ``(T,)`` over them.
    """
    root = Path(root)
    # every file is checked before any (slow) extraction
    reference = _find_image(root, 1)
    homographies = {k: read_homography(root / f"H1to{k}p") for k in targets}
    images = {k: _find_image(root, k) for k in targets}
    features0 = extract(reference)
    results = [
        evaluate_pair(features0, extract(images[k]), homographies[k], thresholds, f"1-{k}")
        for k in targets
    ]
    return results, mean_matching_accuracy([r.accuracy for r in results])


def _find_image(root: Path, index: int) -> Path:
    for ext in (".png", ".ppm", ".jpg", ".pgm"):
        path = root / f"img{index}{ext}"
        if path.is_file():
            return path
    raise InputError(f"{root}: no image img{index}.(png|ppm|jpg|pgm)")


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Command-line MMA of a local-feature model on one homography sequence."""
    from semcorr.features.local import create_local_features
    from semcorr.io import load_image

    parser = argparse.ArgumentParser(prog="python -m semcorr.eval.homography",
                                     description=main.__doc__)
    parser.add_argument("root", help="folder with img1..imgN and H1toKp")
    parser.add_argument("--model", default="r2d2")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--pairs", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--top-k", type=int, default=5000)
    parser.add_argument("--out", default=None, help="optional JSON file for the results")
    args = parser.parse_args(argv)
    model = create_local_features(args.model, weights=args.weights, top_k=args.top_k)
    results, mma = evaluate_sequence(lambda p: model.extract(load_image(p)), args.root, args.pairs)
    summary = {
        "model": args.model, "weights": args.weights, "root": str(args.root),
        "top_k": args.top_k, "thresholds": list(DEFAULT_THRESHOLDS),
        "pairs": {r.name: {"mma": r.accuracy.tolist(), "matches": r.num_matches,
                           "keypoints": list(r.num_keypoints)} for r in results},
        "mma": mma.tolist(),
    }
    for r in results:
        print(f"{r.name}: MMA@3 {r.accuracy[2]:.3f}  matches {r.num_matches}  "
              f"keypoints {r.num_keypoints}")
    print(f"mean: MMA@1..10 {[round(v, 3) for v in mma.tolist()]}")
    if args.out:
        from semcorr.io import atomic_write_json

        atomic_write_json(args.out, summary)
    return summary


if __name__ == "__main__":  # pragma: no cover
    main()
