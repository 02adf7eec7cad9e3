"""Test-time adaptive pose alignment.

A *pose candidate* is a rigid change of the source image (identity, horizontal flip, and, as a
semcorr extension, quarter turns). For each target, the candidate whose features lie closest to
the target's, by the *instance matching distance*, is chosen; the source points are queried in
that candidate's frame. The distances are GeoAware-SC's as released: :func:`mask_distance`
inside instance masks (its default) and :func:`mutual_nn_distance` without masks (its
``MUTUAL_NN`` option). A flipped candidate replaces the identity prediction of a point only when
the point has no left/right partner or its partner is among the points (:data:`PARTNER_UNSEEN`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from semcorr.errors import InputError
from semcorr.geometry import flip_points, rot90_points

__all__ = [
    "POSES",
    "FLIPPING_POSES",
    "apply_pose",
    "pose_points",
    "instance_matching_distance",
    "mask_distance",
    "mutual_nn_distance",
    "check_poses",
    "POSE_DISTANCES",
    "NO_PARTNER",
    "PARTNER_UNSEEN",
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

#: How the instance matching distance is chosen: ``mask`` (GeoAware-SC's default; needs
#: instance masks), ``mutual-nn`` (its ``MUTUAL_NN`` option), ``auto`` (masks where every image
#: of the pair has one, else mutual nearest neighbours).
POSE_DISTANCES: tuple[str, ...] = ("auto", "mask", "mutual-nn")

#: Flip partner codes of a point (see :meth:`semcorr.pipeline.Matcher.match`): the point lies
#: on the symmetry axis (its flipped query is its own mirror) ...
NO_PARTNER = -1
#: ... or its left/right partner is not among the points: a flipped pose never replaces its
#: identity prediction (GeoAware-SC's merge rule).
PARTNER_UNSEEN = -2


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


def _unit_grid(features: torch.Tensor, size: int | None) -> torch.Tensor:
    """Features ``(B, C, h, w)`` L2-normalised per cell, then (when ``size`` is given)
    bilinearly resampled to ``size x size`` *without* normalising again → ``(B, P, C)``."""
    features = F.normalize(features.float(), dim=1)
    if size is not None:
        features = F.interpolate(features, size=(size, size), mode="bilinear",
                                 align_corners=False)
    return features.flatten(2).transpose(1, 2)


def _squared_distances(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Squared L2 distances ``(B, P, Q)`` between rows of ``(B, P, C)`` and ``(B, Q, C)``."""
    src_sq = (src * src).sum(dim=-1)[:, :, None]
    tgt_sq = (tgt * tgt).sum(dim=-1)[:, None, :]
    return (src_sq + tgt_sq - 2 * torch.bmm(src, tgt.transpose(1, 2))).clamp_min(0)


def _bounded(grid: torch.Tensor, max_size: int | None) -> int | None:
    """``max_size`` when ``grid`` ``(B, C, h, w)`` has more than ``max_size²`` cells, else
    ``None`` (keep the native grid)."""
    cells = grid.shape[-2] * grid.shape[-1]
    return max_size if max_size is not None and cells > max_size**2 else None


def _nearest_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Masks ``(B, H, W)`` → ``(B, size * size)`` boolean by nearest-neighbour resampling."""
    resized = F.interpolate(mask[:, None].float(), size=(size, size), mode="nearest")
    return resized.flatten(1) > 0.5


def _mean_where(values: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``(B, P)`` over ``counted`` per row; ``inf`` for a row with none."""
    total = torch.where(counted, values, torch.zeros_like(values)).sum(dim=1)
    count = counted.sum(dim=1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.inf))


def mask_distance(
    source: torch.Tensor,
    target: torch.Tensor,
    source_mask: torch.Tensor,
    target_mask: torch.Tensor,
    size: int = 64,
) -> torch.Tensor:
    """GeoAware-SC's instance matching distance inside instance masks.

    The features are L2-normalised per cell, resampled bilinearly to ``size x size`` (not
    normalised again) and the masks by nearest neighbour; the distance is the mean, over the
    source cells on the object, of the L2 distance to the nearest target cell on the object.

    Args:
        source: ``(B, C, h, w)`` features of the (posed) source.
        target: ``(B, C, h', w')`` features of the target.
        source_mask, target_mask: ``(B, H, W)`` / ``(B, H', W')`` boolean instance masks in
            the square frame of each image (any resolution; see
            :func:`semcorr.pipeline.mask_to_grid`).
        size: side of the common grid (64 in GeoAware-SC).

    Returns:
        ``(B,)`` distances (``inf`` where a mask is empty).
    """
    src, tgt = _unit_grid(source, size), _unit_grid(target, size)  # (B, P, C), (B, Q, C)
    src_on, tgt_on = _nearest_mask(source_mask, size), _nearest_mask(target_mask, size)
    squared = _squared_distances(src, tgt).masked_fill(~tgt_on[:, None, :], math.inf)
    nearest = squared.min(dim=2).values.sqrt()  # (B, P)
    return _mean_where(nearest, src_on & torch.isfinite(nearest))


def mutual_nn_distance(
    source: torch.Tensor,
    target: torch.Tensor,
    source_valid: torch.Tensor | None = None,
    target_valid: torch.Tensor | None = None,
    max_size: int | None = None,
) -> torch.Tensor:
    """GeoAware-SC's instance matching distance without masks: the mean L2 distance of the
    mutual nearest neighbours between the L2-normalised feature cells, on the native grid.

    Args:
        source: ``(B, C, h, w)`` features of the (posed) source.
        target: ``(B, C, h', w')`` features of the target.
        source_valid, target_valid: optional ``(B, h, w)`` / ``(B, h', w')`` cells to use
            (an extension: GeoAware-SC uses every cell, padding included).
        max_size: a grid with more than ``max_size²`` cells is first resampled to
            ``max_size x max_size`` like :func:`mask_distance`'s (a bound on the quadratic
            cost; GeoAware-SC's 60² grid is below the default 64²).

    Returns:
        ``(B,)`` distances (``inf`` without any mutual pair).
    """
    src = _unit_grid(source, _bounded(source, max_size))
    tgt = _unit_grid(target, _bounded(target, max_size))
    squared = _squared_distances(src, tgt)
    for valid, dim in ((target_valid, 1), (source_valid, 2)):
        if valid is not None:
            size = _bounded(valid[:, None], max_size)
            cells = valid.flatten(1) if size is None else _nearest_mask(valid, size)
            squared = squared.masked_fill(~cells.unsqueeze(dim), math.inf)
    best, to_target = squared.min(dim=2)  # (B, P)
    to_source = squared.argmin(dim=1)  # (B, Q)
    rows = torch.arange(src.shape[1], device=src.device)
    mutual = to_source.gather(1, to_target) == rows[None]
    return _mean_where(best.sqrt(), mutual & torch.isfinite(best))


def instance_matching_distance(
    source: torch.Tensor,
    target: torch.Tensor,
    source_mask: torch.Tensor | None = None,
    target_mask: torch.Tensor | None = None,
    size: int = 64,
    mutual: bool = True,
) -> torch.Tensor:
    """How far the source instance's features are from the target's (lower = same pose).

    ``mutual=False``: :func:`mask_distance` inside the instance masks (required) on a
    ``size x size`` grid. ``mutual=True``: :func:`mutual_nn_distance` on the native grid (at
    most ``size x size``), restricted to the cells the masks (``(B, h, w)``, optional) mark.

    Returns:
        ``(B,)`` distances.
    """
    if not mutual:
        if source_mask is None or target_mask is None:
            raise InputError("the instance-mask distance needs a source and a target mask")
        return mask_distance(source, target, source_mask, target_mask, size)
    return mutual_nn_distance(source, target, source_mask, target_mask, max_size=size)
