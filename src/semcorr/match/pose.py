"""Test-time adaptive pose alignment.

A *pose candidate* is a rigid change of the source image (identity, horizontal flip, quarter
turns). For each target, the candidate whose features lie closest to the target's, by the
*instance matching distance*, is chosen; the source points are queried in that candidate's frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from semcorr.errors import InputError
from semcorr.geometry import flip_points, rot90_points
from semcorr.match.rules import mutual_nearest_neighbors

__all__ = [
    "POSES",
    "FLIPPING_POSES",
    "apply_pose",
    "pose_points",
    "instance_matching_distance",
    "check_poses",
]

#: Known pose candidates: name → (horizontal flip first?, counter-clockwise quarter turns).
POSES: dict[str, tuple[bool, int]] = {
    "identity": (False, 0),
    "hflip": (True, 0),
    "rot90": (False, 1),
    "rot180": (False, 2),
    "rot270": (False, 3),
}
FLIPPING_POSES = frozenset(name for name, (flip, _) in POSES.items() if flip)


def check_poses(poses: Sequence[str]) -> tuple[str, ...]:
    """Validate candidate names; ``identity`` is always first."""
    unknown = [p for p in poses if p not in POSES]
    if unknown:
        raise InputError(f"unknown pose candidate(s) {unknown} (known: {', '.join(POSES)})")
    return ("identity",) + tuple(dict.fromkeys(p for p in poses if p != "identity"))


def apply_pose(image: torch.Tensor, pose: str) -> torch.Tensor:
    """The image ``(..., H, W)`` seen in pose ``pose``."""
    flip, turns = POSES[pose]
    if flip:
        image = image.flip(-1)
    return torch.rot90(image, turns, dims=(-2, -1)) if turns else image


def pose_points(points: torch.Tensor, width: int, height: int, pose: str) -> torch.Tensor:
    """Points ``(..., 2)`` of a ``width x height`` image → the same pixels in the posed image."""
    flip, turns = POSES[pose]
    if flip:
        points = flip_points(points, width)
    return rot90_points(points, width, height, turns) if turns else points


def _resample(features: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    features = F.interpolate(features.float(), size=(size, size), mode="bilinear",
                             align_corners=False)
    mask = F.interpolate(mask[:, None].float(), size=(size, size), mode="nearest")[:, 0] > 0.5
    return F.normalize(features.flatten(2), dim=1), mask.flatten(1)


def instance_matching_distance(
    source: torch.Tensor,
    target: torch.Tensor,
    source_mask: torch.Tensor,
    target_mask: torch.Tensor,
    size: int = 64,
    mutual: bool = True,
) -> torch.Tensor:
    """How far the source instance's features are from the target's (lower = same pose).

    Both maps are resampled to ``size x size`` and L2-normalised. With ``mutual=False`` (masks
    are instance masks) it is the mean, over source cells in the source mask, of the L2 distance
    to the nearest target cell in the target mask. With ``mutual=True`` (masks only cover the
    image content) it is the mean distance over mutual nearest neighbours.

    Args:
        source: ``(B, C, h, w)`` features of the (posed) source.
        target: ``(B, C, h', w')`` features of the target.
        source_mask, target_mask: ``(B, h, w)`` / ``(B, h', w')`` boolean, True on the object
            (or on image content).
        size: side of the common grid.
        mutual: use mutual nearest neighbours instead of one-way nearest neighbours.

    Returns:
        ``(B,)`` distances.
    """
    src, src_mask = _resample(source, source_mask, size)  # (B, C, P), (B, P)
    tgt, tgt_mask = _resample(target, target_mask, size)
    similarity = torch.bmm(src.transpose(1, 2), tgt)  # (B, P, Q)
    valid = src_mask[:, :, None] & tgt_mask[:, None, :]
    similarity = similarity.masked_fill(~valid, float("-inf"))
    if mutual:
        matches, _ = mutual_nearest_neighbors(similarity)
        counted = (matches >= 0) & src_mask
        best = similarity.gather(2, matches.clamp_min(0)[..., None])[..., 0]
    else:
        best = similarity.max(dim=2).values
        counted = src_mask & torch.isfinite(best)
    distance = torch.sqrt((2 - 2 * best.clamp(-1, 1)).clamp_min(0))
    distance = torch.where(counted, distance, torch.zeros_like(distance))
    return distance.sum(dim=1) / counted.sum(dim=1).clamp_min(1)
