"""Training R2D2: pixel samplers, the differentiable AP loss, the confidence losses, synthetic
homography pairs and a resumable trainer.

Ground truth between two images is an *absolute flow* ``aflow`` ``(B, 2, H, W)``: for each
pixel ``(x, y)`` of image 1, the position ``(x2, y2)`` of the same point in image 2 (pixel
centres at integers, :mod:`semcorr.conventions`), ``nan`` where it has no partner.

Samplers turn descriptors ``(B, D, H, W)`` of both images and the flow into a ranking problem:
``scores`` ``(N, K)`` of N query pixels of image 1 against K candidates of image 2, ``labels``
``(N, K)`` (True = correct partner), ``valid`` ``(N,)`` (the query has a partner) and the
query's ``reliability`` ``(N,)`` when reliability maps are given.
"""

from __future__ import annotations

import io
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from semcorr.errors import ImageError, InputError, WeightsError
from semcorr.features.r2d2 import (
    R2D2,
    R2D2Config,
    R2D2Net,
    build_network,
    read_checkpoint,
)
from semcorr.io import atomic_write_bytes, atomic_write_json, load_image

__all__ = [
    "APLoss",
    "R2D2Loss",
    "R2D2TrainConfig",
    "SampledPairs",
    "SyntheticPairs",
    "cosim_loss",
    "flow_from_homography",
    "full_sampler",
    "grid_sampler",
    "homography_from_corners",
    "neighbourhood_sampler",
    "peaky_loss",
    "photometric_change",
    "quantized_ap",
    "random_homography",
    "reliability_ap_loss",
    "synthetic_mma",
    "train_r2d2",
    "warp_image",
]


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------


def _to_grid(xy: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pixel coordinates ``(..., 2)`` → ``grid_sample`` coordinates (``align_corners=False``).

    ``nan`` (no partner) becomes a far-away value, which zero padding samples as 0.
    """
    grid = (2 * xy + 1) / xy.new_tensor([width, height]) - 1
    return torch.nan_to_num(grid, nan=1e4)


def warp_to_first(maps2: torch.Tensor, aflow: torch.Tensor, padding: str = "zeros"
                  ) -> torch.Tensor:
    """Resample maps of image 2 ``(B, C, H2, W2)`` at the flow ``(B, 2, H, W)`` → ``(B, C, H, W)``.
    """
    h2, w2 = maps2.shape[-2:]
    grid = _to_grid(aflow.permute(0, 2, 3, 1), w2, h2)
    return F.grid_sample(maps2, grid.to(maps2.dtype), mode="bilinear", padding_mode=padding,
                         align_corners=False)


def _flow_valid(aflow: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``(B, H, W)`` True where the flow lands inside a ``width x height`` image."""
    x, y = aflow[:, 0], aflow[:, 1]
    return (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)


# --------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------


@dataclass
class SampledPairs:
    """A ranking problem drawn from two images (see the module docstring)."""

    scores: torch.Tensor
    labels: torch.Tensor
    valid: torch.Tensor
    reliability: torch.Tensor | None = None


def _grid_positions(
    batch: int, height: int, width: int, step: int, border: int, device: torch.device,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat ``(b, y, x)`` positions: a regular grid of ``step`` (> 0) inside ``border``, or
    ``(H - 2 border)(W - 2 border) / step^2`` random positions per image when ``step < 0``."""
    if step > 0:
        ys = torch.arange(border, height - border, step, device=device)
        xs = torch.arange(border, width - border, step, device=device)
        b, y, x = torch.meshgrid(torch.arange(batch, device=device), ys, xs, indexing="ij")
        return b.reshape(-1), y.reshape(-1), x.reshape(-1)
    if step == 0:
        raise InputError("a sampling step must not be 0")
    n = max(1, (height - 2 * border) * (width - 2 * border) // step**2)
    y = torch.randint(border, height - border, (batch, n), generator=generator).to(device)
    x = torch.randint(border, width - border, (batch, n), generator=generator).to(device)
    b = torch.arange(batch, device=device)[:, None].expand(batch, n)
    return b.reshape(-1), y.reshape(-1), x.reshape(-1)


def grid_sampler(
    descriptors: Sequence[torch.Tensor],
    aflow: torch.Tensor,
    reliability: Sequence[torch.Tensor] | None = None,
    query_step: int = 8,
    database_step: int = 8,
    border: int = 16,
) -> SampledPairs:
    """Queries on a grid of image 1 against a grid of image 2 warped into image 1's frame.

    Every query is compared with every database pixel of every image of the batch; the label is
    True for the database pixel at the query's own position (possible only when
    ``query_step`` is a multiple of ``database_step``).

    Args:
        descriptors: ``(B, D, H, W)`` of image 1 and of image 2 (unit-norm).
        aflow: ``(B, 2, H, W)``.
        reliability: optional ``(B, 1, H, W)`` maps of both images.
        query_step, database_step: grid steps in pixels.
        border: pixels left out on each side.

    Returns:
        ``scores``/``labels`` ``(N, M)`` with N queries and M database pixels.
    """
    d1, d2 = descriptors
    b, _, h, w = d1.shape
    if query_step % database_step:
        raise InputError("query_step must be a multiple of database_step")
    warped = warp_to_first(d2, aflow)
    valid_map = _flow_valid(aflow, d2.shape[-1], d2.shape[-2])
    qb, qy, qx = _grid_positions(b, h, w, query_step, border, d1.device)
    db, dy, dx = _grid_positions(b, h, w, database_step, border, d1.device)
    queries = d1[qb, :, qy, qx]
    database = warped[db, :, dy, dx]
    labels = (qb[:, None] == db[None]) & (qy[:, None] == dy[None]) & (qx[:, None] == dx[None])
    rel = None
    if reliability is not None:
        r1, r2 = reliability
        rel = (r1[qb, 0, qy, qx] + warp_to_first(r2, aflow)[qb, 0, qy, qx]) / 2
    return SampledPairs(queries @ database.t(), labels, valid_map[qb, qy, qx], rel)


def full_sampler(
    descriptors: Sequence[torch.Tensor],
    aflow: torch.Tensor,
    reliability: Sequence[torch.Tensor] | None = None,
) -> SampledPairs:
    """Every pixel of image 1 against every pixel of (warped) image 2: :func:`grid_sampler`
    with steps 1 and no border. Quadratic in the number of pixels: tiny images only."""
    return grid_sampler(descriptors, aflow, reliability, query_step=1, database_step=1,
                        border=0)


def _ring_offsets(radius: int, step: int, inner: float, outer: float,
                  device: torch.device) -> torch.Tensor:
    """Integer offsets ``(K, 2)`` (dx, dy) on a grid of ``step`` with ``inner^2 <= d^2 <=
    outer^2``."""
    span = (radius // step) * step
    r = torch.arange(-span, span + 1, step, device=device)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    d2 = dx**2 + dy**2
    keep = (d2 >= inner**2) & (d2 <= outer**2)
    return torch.stack([dx[keep], dy[keep]], dim=-1)


def neighbourhood_sampler(
    descriptors: Sequence[torch.Tensor],
    aflow: torch.Tensor,
    reliability: Sequence[torch.Tensor] | None = None,
    radius: int = 7,
    query_step: int = -8,
    database_step: int = 1,
    positive_radius: float = 3,
    negative_radius: float = 5,
    border: int = 16,
    distractor_step: int = -8,
    max_pool_positives: bool = True,
    generator: torch.Generator | None = None,
) -> SampledPairs:
    """Positives within ``positive_radius`` of the true partner in image 2, negatives in the
    ring ``negative_radius <= d <= radius`` around it, plus distractors far away.

    Image 2 is not warped: candidates are read at integer offsets around the rounded flow
    (clamped to the image). With ``max_pool_positives`` the positives collapse into the best
    one. Distractors (grid of ``distractor_step``, random when negative, over all images of
    the batch; 0 disables) closer than ``negative_radius`` to the partner are pushed to score
    -1, below the AP quantiser's range, where they rank after every real candidate.

    Args:
        descriptors: ``(B, D, H, W)`` of both images (unit-norm).
        aflow: ``(B, 2, H, W)``.
        reliability: optional ``(B, 1, H, W)`` of both images.
        radius, positive_radius, negative_radius: in pixels.
        query_step: query grid step (negative: as many random queries).
        database_step: step of the candidate offsets.
        border: query pixels stay this far from image 1's edges.
        distractor_step: see above.
        max_pool_positives: keep only the best positive.
        generator: random positions' generator.

    Returns:
        ``scores``/``labels`` ``(N, K)``; the positives come first.
    """
    d1, d2 = descriptors
    b, _, h, w = d1.shape
    h2, w2 = d2.shape[-2:]
    device = d1.device
    qb, qy, qx = _grid_positions(b, h, w, query_step, border, device, generator)
    queries = d1[qb, :, qy, qx]  # (N, D)
    flow = aflow[qb, :, qy, qx]  # (N, 2)
    valid = torch.isfinite(flow).all(dim=-1)
    partner = torch.floor(torch.nan_to_num(flow, nan=-1e6) + 0.5).long()  # (N, 2)
    valid &= (partner[:, 0] >= 0) & (partner[:, 0] < w2) & (partner[:, 1] >= 0) & (
        partner[:, 1] < h2)

    def candidates(offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xy = partner[:, None] + offsets[None]  # (N, K, 2)
        x = xy[..., 0].clamp(0, w2 - 1)
        y = xy[..., 1].clamp(0, h2 - 1)
        return (queries[:, None] * d2[qb[:, None], :, y, x]).sum(-1), x, y

    pos_offsets = _ring_offsets(radius, database_step, 0, positive_radius, device)
    neg_offsets = _ring_offsets(radius, database_step, negative_radius, radius, device)
    positives, px, py = candidates(pos_offsets)
    negatives, _, _ = candidates(neg_offsets)
    rel = None
    if reliability is not None:
        r1, r2 = reliability
        rel2 = r2[qb[:, None], 0, py, px]  # (N, P)
    if max_pool_positives:
        positives, best = positives.max(dim=1, keepdim=True)
        if reliability is not None:
            rel2 = rel2.gather(1, best)
    if reliability is not None:
        rel = r1[qb, 0, qy, qx]
        if max_pool_positives:  # the reference averages with the chosen positive's
            rel = (rel + rel2[:, 0]) / 2
    parts = [positives, negatives]
    if distractor_step:
        parts.append(_distractor_scores(queries, qb, partner, d2, distractor_step, border,
                                        negative_radius, generator))
    scores = torch.cat(parts, dim=1)
    labels = torch.zeros_like(scores, dtype=torch.bool)
    labels[:, : positives.shape[1]] = True
    return SampledPairs(scores, labels, valid, rel)


def _distractor_scores(
    queries: torch.Tensor, qb: torch.Tensor, partner: torch.Tensor, d2: torch.Tensor,
    step: int, border: int, negative_radius: float, generator: torch.Generator | None,
) -> torch.Tensor:
    """Scores ``(N, M)`` of queries against far-away pixels of all images 2 of the batch."""
    b, _, h2, w2 = d2.shape
    db, dy, dx = _grid_positions(b, h2, w2, step, border, d2.device, generator)
    scores = queries @ d2[db, :, dy, dx].t()
    d2_dist = (dx[None] - partner[:, :1]) ** 2 + (dy[None] - partner[:, 1:]) ** 2
    too_close = (db[None] == qb[:, None]) & (d2_dist < negative_radius**2)
    return scores.masked_fill(too_close, -1.0)


# --------------------------------------------------------------------------------------------
# AP loss
# --------------------------------------------------------------------------------------------


def _bin_weights(scores: torch.Tensor, num_bins: int, low: float, high: float) -> torch.Tensor:
    """Soft assignment ``(N, Q, M)`` of scores ``(N, M)`` to Q bins, from ``high`` down to ``low``.

    Triangular kernels of half-width one bin spacing; the first bin takes everything above
    ``high`` and the last everything below ``low``.
    """
    slope = (num_bins - 1) / (high - low)
    centres = torch.linspace(high, low, num_bins, device=scores.device, dtype=scores.dtype)
    offset = scores[:, None, :] - centres[None, :, None]  # (N, Q, M) score minus centre
    weights = (1 - slope * offset.abs()).clamp(min=0)
    top = (1 + slope * offset[:, :1]).clamp(0, 1)  # saturates above ``high``
    bottom = (1 - slope * offset[:, -1:]).clamp(0, 1)  # saturates below ``low``
    return torch.cat([top, weights[:, 1:-1], bottom], dim=1)


def quantized_ap(
    scores: torch.Tensor,
    labels: torch.Tensor,
    num_bins: int = 20,
    low: float = 0.0,
    high: float = 1.0,
) -> torch.Tensor:
    """Differentiable average precision by histogram quantisation (Revaud et al., ICCV 2019).

    Scores are softly binned; with ``c_q`` and ``c_q^+`` the (soft) counts of all and of
    positive candidates in bin ``q`` (bins from high to low scores), precision at bin ``q`` is
    ``sum_{k<=q} c_k^+ / sum_{k<=q} c_k`` and AP = ``sum_q precision_q c_q^+ / sum_q c_q^+``.
    When every score sits on a distinct bin centre this is exactly the ranking AP.

    Args:
        scores: ``(N, M)`` similarities, meant to lie in ``[low, high]``.
        labels: ``(N, M)`` True/1 for positives.
        num_bins: number of bins (2..100).
        low, high: the quantiser's range.

    Returns:
        ``(N,)`` AP per query; 0 for a query without positives.
    """
    if scores.shape != labels.shape or scores.dim() != 2:
        raise InputError(f"scores and labels must both be (N, M), got {tuple(scores.shape)} "
                         f"and {tuple(labels.shape)}")
    if not 2 <= num_bins <= 100 or high <= low:
        raise InputError("need 2 <= num_bins <= 100 and low < high")
    weights = _bin_weights(scores, num_bins, low, high)  # (N, Q, M)
    counts = weights.sum(dim=-1)  # (N, Q)
    hits = (weights * labels[:, None, :].to(weights.dtype)).sum(dim=-1)  # (N, Q)
    precision = hits.cumsum(dim=-1) / (counts.cumsum(dim=-1) + 1e-16)
    recall = hits / hits.sum(dim=-1, keepdim=True).clamp_min(1e-16)
    return (precision * recall).sum(dim=-1)


class APLoss(nn.Module):
    """Module form of :func:`quantized_ap`: returns the AP ``(N,)`` (minimise ``1 - AP``)."""

    def __init__(self, num_bins: int = 20, low: float = 0.0, high: float = 1.0) -> None:
        super().__init__()
        self.num_bins, self.low, self.high = num_bins, low, high

    def forward(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return quantized_ap(scores, labels, self.num_bins, self.low, self.high)


def reliability_ap_loss(
    ap: torch.Tensor,
    reliability: torch.Tensor | None,
    valid: torch.Tensor,
    base: float = 0.5,
) -> torch.Tensor:
    """Mean of ``1 - AP R - (1 - R) base`` over valid queries (``1 - AP`` without ``R``).

    A reliable pixel (R near 1) is asked for a high AP; an unreliable one pays ``1 - base``.

    Args:
        ap: ``(N,)``.
        reliability: ``(N,)`` in [0, 1], or None.
        valid: ``(N,)`` bool.
        base: the AP an unreliable pixel is assumed to have (0 <= base < 1).
    """
    if reliability is None:
        per_query = 1 - ap
    else:
        per_query = 1 - ap * reliability - (1 - reliability) * base
    if not bool(valid.any()):
        return ap.sum() * 0
    return per_query[valid].mean()


def cosim_loss(
    repeatability1: torch.Tensor,
    repeatability2: torch.Tensor,
    aflow: torch.Tensor,
    patch: int = 16,
) -> torch.Tensor:
    """``1 -`` mean cosine similarity of ``patch x patch`` repeatability patches (stride
    ``patch / 2``) of image 1 and of image 2 warped into image 1 (border padding).

    Args:
        repeatability1, repeatability2: ``(B, 1, H, W)``.
        aflow: ``(B, 2, H, W)``.
    """
    warped = warp_to_first(repeatability2, aflow, padding="border")
    p1 = F.normalize(F.unfold(repeatability1, patch, stride=patch // 2), dim=1)
    p2 = F.normalize(F.unfold(warped, patch, stride=patch // 2), dim=1)
    return 1 - (p1 * p2).sum(dim=1).mean()


def _peakiness(repeatability: torch.Tensor, patch: int) -> torch.Tensor:
    smooth = F.avg_pool2d(repeatability, 3, stride=1, padding=1)
    local_max = F.max_pool2d(smooth, patch + 1, stride=1, padding=patch // 2)
    local_mean = F.avg_pool2d(smooth, patch + 1, stride=1, padding=patch // 2)
    return 1 - (local_max - local_mean).mean()


def peaky_loss(repeatability1: torch.Tensor, repeatability2: torch.Tensor, patch: int = 16
               ) -> torch.Tensor:
    """``1 -`` mean gap between the local max and the local mean of the (3x3-smoothed)
    repeatability over ``(patch + 1)^2`` windows, averaged over both images ``(B, 1, H, W)``."""
    if patch % 2:
        raise InputError(f"patch must be even, got {patch}")
    return (_peakiness(repeatability1, patch) + _peakiness(repeatability2, patch)) / 2


class R2D2Loss(nn.Module):
    """The published objective: reliability-weighted AP + cosim + peaky (weights 1, 1, 1).

    Args:
        sampler: keyword options of :func:`neighbourhood_sampler`.
        num_bins: AP quantiser bins.
        base: reliability base AP.
        patch: patch size of the repeatability losses.
    """

    def __init__(self, sampler: dict[str, Any] | None = None, num_bins: int = 20,
                 base: float = 0.5, patch: int = 16) -> None:
        super().__init__()
        self.sampler = dict(sampler or {})
        self.ap = APLoss(num_bins)
        self.base, self.patch = base, patch

    def forward(self, out1: dict[str, torch.Tensor], out2: dict[str, torch.Tensor],
                aflow: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss and its parts from the network outputs of both images and the flow."""
        sampled = neighbourhood_sampler(
            (out1["descriptors"], out2["descriptors"]), aflow,
            (out1["reliability"], out2["reliability"]), generator=generator, **self.sampler)
        ap = self.ap(sampled.scores, sampled.labels)
        parts = {
            "reliability": reliability_ap_loss(ap, sampled.reliability, sampled.valid,
                                               self.base),
            "cosim": cosim_loss(out1["repeatability"], out2["repeatability"], aflow,
                                self.patch),
            "peaky": peaky_loss(out1["repeatability"], out2["repeatability"], self.patch),
        }
        total = sum(parts.values())
        details = {k: float(v.detach()) for k, v in parts.items()}
        valid_ap = ap.detach()[sampled.valid]
        details["ap"] = float(valid_ap.mean()) if valid_ap.numel() else 0.0
        return total, details


# --------------------------------------------------------------------------------------------
# Synthetic pairs
# --------------------------------------------------------------------------------------------


def homography_from_corners(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The homography mapping four points to four points (direct linear transform).

    Args:
        source: ``(4, 2)``.
        target: ``(4, 2)``.

    Returns:
        ``(3, 3)`` float64 with ``H[2, 2] = 1``.
    """
    s, t = source.to(torch.float64), target.to(torch.float64)
    zeros, ones = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    x, y, u, v = s[:, 0], s[:, 1], t[:, 0], t[:, 1]
    rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], dim=1)
    rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], dim=1)
    a = torch.cat([rows_u, rows_v])
    rhs = torch.cat([u, v])
    h = torch.linalg.solve(a, rhs)
    return torch.cat([h, torch.ones(1, dtype=torch.float64)]).view(3, 3)


def random_homography(
    width: int,
    height: int,
    generator: torch.Generator,
    max_rotation: float = 0.4,
    scale_range: tuple[float, float] = (0.7, 1.3),
    max_tilt: float = 0.15,
) -> torch.Tensor:
    """A random homography about the image centre: rotation, scale and a perspective tilt
    (each corner moved by up to ``max_tilt`` of the image size).

    Returns:
        ``(3, 3)`` float64 mapping image-1 pixels to image-2 pixels (same size).
    """

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape or (1,), generator=generator,
                                           dtype=torch.float64)

    cx, cy = (width - 1) / 2, (height - 1) / 2
    corners = torch.tensor([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]],
                           dtype=torch.float64)
    centred = corners - corners.new_tensor([cx, cy])
    angle = float(uniform(-max_rotation, max_rotation))
    scale = math.exp(float(uniform(math.log(scale_range[0]), math.log(scale_range[1]))))
    rot = corners.new_tensor([[math.cos(angle), -math.sin(angle)],
                              [math.sin(angle), math.cos(angle)]])
    tilt = uniform(-max_tilt, max_tilt, 4, 2) * corners.new_tensor([width, height])
    moved = (centred + tilt) @ rot.t() * scale + corners.new_tensor([cx, cy])
    return homography_from_corners(corners, moved)


def _pixel_grid(width: int, height: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(H, W, 2)`` (x, y) of every pixel centre."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=dtype), torch.arange(width, dtype=dtype),
                            indexing="ij")
    return torch.stack([xs, ys], dim=-1)


def _apply(homography: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    ones = torch.ones_like(xy[..., :1])
    mapped = torch.cat([xy, ones], dim=-1) @ homography.to(xy.dtype).t()
    return mapped[..., :2] / mapped[..., 2:3]


def warp_image(image: torch.Tensor, homography: torch.Tensor, width: int, height: int
               ) -> torch.Tensor:
    """Image 2 of size ``width x height`` with ``image2(H p) = image(p)``.

    Args:
        image: ``(3, H, W)``.
        homography: ``(3, 3)`` from ``image``'s pixels to the output's.

    Returns:
        ``(3, height, width)``; zeros where the source is outside ``image``.
    """
    source = _apply(torch.linalg.inv(homography), _pixel_grid(width, height))
    grid = _to_grid(source, image.shape[-1], image.shape[-2]).to(image.dtype)
    return F.grid_sample(image[None], grid[None], mode="bilinear", padding_mode="zeros",
                         align_corners=False)[0]


def flow_from_homography(homography: torch.Tensor, width: int, height: int,
                         width2: int | None = None, height2: int | None = None) -> torch.Tensor:
    """Absolute flow ``(2, height, width)`` (float32) of image 1's pixels; ``nan`` outside
    image 2 (``width2 x height2``, default the same size)."""
    xy = _apply(homography, _pixel_grid(width, height))
    w2, h2 = width2 or width, height2 or height
    inside = (xy[..., 0] >= -0.5) & (xy[..., 0] <= w2 - 0.5) & (xy[..., 1] >= -0.5) & (
        xy[..., 1] <= h2 - 0.5)
    xy = torch.where(inside[..., None], xy, torch.full_like(xy, float("nan")))
    return xy.permute(2, 0, 1).float()


def photometric_change(image: torch.Tensor, generator: torch.Generator,
                       strength: float = 0.2, noise: float = 25 / 255) -> torch.Tensor:
    """Random brightness, contrast, saturation, gamma and pixel noise on ``(3, H, W)`` in
    [0, 1]."""

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand(1, generator=generator))

    gray = image.mean(dim=0, keepdim=True)
    out = gray + (image - gray) * uniform(1 - strength, 1 + strength)  # saturation
    out = out.mean() + (out - out.mean()) * uniform(1 - strength, 1 + strength)  # contrast
    out = out * uniform(1 - strength, 1 + strength)  # brightness
    out = out.clamp(0, 1) ** uniform(1 - strength / 2, 1 + strength / 2)  # gamma
    out = out + noise * uniform(0, 1) * torch.randn(out.shape, generator=generator)
    return out.clamp(0, 1)


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".webp", ".tif", ".tiff"}


class SyntheticPairs(torch.utils.data.Dataset):
    """Training pairs from any image folder: a random crop, a random homography of it (with
    real content around the crop) and a photometric change.

    Item ``i`` is a function of ``(seed, i)`` only. Unreadable images are skipped (the next
    readable one is used) and listed in :attr:`skipped`.

    Args:
        root: folder searched recursively for images.
        crop: side of the square crops (pixels).
        length: number of items (default: the number of images).
        seed: base seed.
        max_side: images are first resized so their long side is at most this.
        homography: keyword options of :func:`random_homography`.

    Items are dicts: ``image1``, ``image2`` ``(3, crop, crop)`` in [0, 1], ``aflow``
    ``(2, crop, crop)``, ``homography`` ``(3, 3)`` float64.
    """

    def __init__(self, root: str | os.PathLike[str], crop: int = 192, length: int | None = None,
                 seed: int = 0, max_side: int = 512,
                 homography: dict[str, Any] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: no such image folder")
        self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not self.paths:
            raise InputError(f"{self.root}: no images ({', '.join(sorted(_IMAGE_SUFFIXES))})")
        self.crop, self.seed, self.max_side = crop, seed, max_side
        self.length = length or len(self.paths)
        self.homography = dict(homography or {})
        self.skipped: dict[str, str] = {}
        self._cache: dict[Path, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.length

    def _image(self, path: Path) -> torch.Tensor:
        if path not in self._cache:
            image = load_image(path)
            h, w = image.shape[-2:]
            factor = max(self.crop / min(h, w), min(1.0, self.max_side / max(h, w)))
            size = (max(self.crop, round(h * factor)), max(self.crop, round(w * factor)))
            image = F.interpolate(image[None], size, mode="bilinear", antialias=True,
                                  align_corners=False)[0]
            self._cache[path] = image.clamp(0, 1)
        return self._cache[path]

    def _readable(self, index: int) -> torch.Tensor:
        for k in range(len(self.paths)):
            path = self.paths[(index + k) % len(self.paths)]
            if str(path) in self.skipped:
                continue
            try:
                return self._image(path)
            except ImageError as exc:
                self.skipped[str(path)] = str(exc)
        raise InputError(f"{self.root}: none of the images is readable")

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        image = self._readable(index)
        h, w = image.shape[-2:]
        s = self.crop
        ox = int(torch.randint(0, w - s + 1, (1,), generator=generator))
        oy = int(torch.randint(0, h - s + 1, (1,), generator=generator))
        image1 = image[:, oy:oy + s, ox:ox + s]
        homography = random_homography(s, s, generator, **self.homography)
        shift = torch.tensor([[1, 0, -ox], [0, 1, -oy], [0, 0, 1]], dtype=torch.float64)
        image2 = warp_image(image, homography @ shift, s, s)
        return {
            "image1": photometric_change(image1, generator),
            "image2": photometric_change(image2, generator),
            "aflow": flow_from_homography(homography, s, s),
            "homography": homography,
        }


# --------------------------------------------------------------------------------------------
# Evaluation on synthetic pairs
# --------------------------------------------------------------------------------------------


def synthetic_mma(model: R2D2, pairs: Sequence[dict[str, torch.Tensor]], threshold: float = 3.0,
                  top_k: int = 500) -> float:
    """MMA at ``threshold`` px of single-scale keypoints (no confidence thresholds, best
    ``top_k`` by score) over synthetic pairs (items of :class:`SyntheticPairs`)."""
    from semcorr.eval.homography import evaluate_pair, mean_matching_accuracy

    config = R2D2Config.single_scale(reliability_threshold=0.0, repeatability_threshold=0.0,
                                     top_k=top_k)
    results = [
        evaluate_pair(model.extract(p["image1"], config), model.extract(p["image2"], config),
                      p["homography"], (threshold,)).accuracy
        for p in pairs
    ]
    return float(mean_matching_accuracy(results)[0])


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------

_MODEL_ARCH = {"r2d2": "Quad_L2Net_ConfCFS", "faster2d2": "Fast_Quad_L2Net_ConfCFS"}


@dataclass
class R2D2TrainConfig:
    """Settings of :func:`train_r2d2` (defaults: the published ones where they apply).

    Attributes:
        images: folder of training images (synthetic homography pairs are made from them).
        out: output folder (``last.pt`` to resume, ``model.pt`` in the published format,
            ``config.json``, ``log.jsonl``).
        model: ``r2d2`` or ``faster2d2``.
        mchan, dim: network width (published: 4, 128).
        init: optional checkpoint to start from (published format).
        steps, batch_size, crop, lr, weight_decay: optimisation (Adam).
        seed: seeds data and sampling (nothing global is seeded).
        patch: patch size of the repeatability losses.
        num_bins, base: AP quantiser bins and reliability base.
        sampler: options of :func:`neighbourhood_sampler`.
        checkpoint_every: steps between checkpoints.
    """

    images: str
    out: str
    model: str = "r2d2"
    mchan: int = 4
    dim: int = 128
    init: str | None = None
    steps: int = 1000
    batch_size: int = 4
    crop: int = 192
    lr: float = 1e-4
    weight_decay: float = 5e-4
    seed: int = 0
    patch: int = 16
    num_bins: int = 20
    base: float = 0.5
    sampler: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        if self.model not in _MODEL_ARCH:
            raise InputError(f"unknown model {self.model!r} (known: {', '.join(_MODEL_ARCH)})")
        if self.steps < 0 or self.batch_size < 1 or self.crop < 2 * self.patch:
            raise InputError("need steps >= 0, batch_size >= 1 and crop >= 2 * patch")

    def net_string(self) -> str:
        """The constructor string saved as ``net`` (readable by the published loader)."""
        return f"{_MODEL_ARCH[self.model]}(mchan={self.mchan}, dim={self.dim})"


def _state_bytes(obj: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _batches(dataset: SyntheticPairs, batch_size: int, start_step: int, steps: int
             ) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """``(step, batch)`` for steps ``start_step .. steps - 1``; items in a fixed order."""
    for step in range(start_step, steps):
        items = [dataset[(step * batch_size + k) % len(dataset)] for k in range(batch_size)]
        yield step, {key: torch.stack([it[key] for it in items]) for key in items[0]}


def _build_model(config: R2D2TrainConfig) -> R2D2:
    if config.init:
        from semcorr.features.r2d2 import load_r2d2_network

        net, _ = load_r2d2_network(config.init)
    else:
        with torch.random.fork_rng():  # seeded initialisation, global RNG state untouched
            torch.manual_seed(config.seed)
            net = build_network(_MODEL_ARCH[config.model], mchan=config.mchan, dim=config.dim)
    if not isinstance(net, R2D2Net):
        raise WeightsError(f"{config.init}: not a network with confidence heads")
    return R2D2(net, name=config.model)


def train_r2d2(
    config: R2D2TrainConfig,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    dataset: SyntheticPairs | None = None,
) -> Path:
    """Train (or resume training) R2D2 on synthetic homography pairs.

    Resumes from ``out/last.pt`` when it exists and was written with the same config (only
    ``steps`` and ``checkpoint_every`` may change, e.g. to extend a run). All files are written
    atomically.

    Args:
        config: see :class:`R2D2TrainConfig`.
        progress: called with ``(step, losses)`` after each step.
        dataset: optional dataset (default: :class:`SyntheticPairs` of ``config.images``).

    Returns:
        The path of ``model.pt`` (published checkpoint format: ``net`` + ``state_dict``).
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    saved_conf = {k: v for k, v in asdict(config).items() if k != "out"}
    dataset = dataset or SyntheticPairs(config.images, crop=config.crop, seed=config.seed,
                                        length=max(1, config.steps * config.batch_size))
    model = _build_model(config)
    optimizer = torch.optim.Adam(model.net.parameters(), lr=config.lr,
                                 weight_decay=config.weight_decay)
    loss_fn = R2D2Loss(config.sampler, config.num_bins, config.base, config.patch)
    start = _resume(out / "last.pt", saved_conf, model, optimizer)
    atomic_write_json(out / "config.json", saved_conf)
    generator = torch.Generator().manual_seed(config.seed + 7919 * start)
    model.net.train()
    log = []
    for step, batch in _batches(dataset, config.batch_size, start, config.steps):
        optimizer.zero_grad(set_to_none=True)
        out1, out2 = model(batch["image1"]), model(batch["image2"])
        loss, details = loss_fn(out1, out2, batch["aflow"], generator)
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss is not finite at step {step}: {details}")
        loss.backward()
        optimizer.step()
        details.update(step=step, loss=float(loss.detach()))
        log.append(details)
        if progress is not None:
            progress(step, details)
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            _save(out, saved_conf, config, model, optimizer, step + 1, log)
            log = []
    if start >= config.steps and not (out / "model.pt").is_file():
        _save(out, saved_conf, config, model, optimizer, start, log)
    if dataset.skipped:
        atomic_write_json(out / "skipped.json", dataset.skipped)
        print(f"skipped {len(dataset.skipped)} unreadable image(s): see {out / 'skipped.json'}",
              file=sys.stderr)
    model.net.eval()
    return out / "model.pt"


def _save(out: Path, saved_conf: dict[str, Any], config: R2D2TrainConfig, model: R2D2,
          optimizer: torch.optim.Optimizer, step: int, log: list[dict[str, float]]) -> None:
    state = {k: v.detach().cpu() for k, v in model.net.state_dict().items()}
    atomic_write_bytes(out / "model.pt", _state_bytes({"net": config.net_string(),
                                                        "state_dict": state}))
    atomic_write_bytes(out / "last.pt", _state_bytes({
        "net": config.net_string(), "state_dict": state, "step": step,
        "optimizer": optimizer.state_dict(), "config": saved_conf,
    }))
    if log:
        import json

        lines = "".join(json.dumps(entry) + "\n" for entry in log)
        previous = (out / "log.jsonl").read_text() if (out / "log.jsonl").is_file() else ""
        atomic_write_bytes(out / "log.jsonl", (previous + lines).encode())


def _resume(path: Path, saved_conf: dict[str, Any], model: R2D2,
            optimizer: torch.optim.Optimizer) -> int:
    """Load ``last.pt`` if present; returns the step to start from (0 without it)."""
    if not path.is_file():
        return 0
    checkpoint = read_checkpoint(path)
    extendable = ("steps", "checkpoint_every")  # a run may be extended or checkpointed anew
    previous = {k: v for k, v in (checkpoint.get("config") or {}).items() if k not in extendable}
    if previous != {k: v for k, v in saved_conf.items() if k not in extendable}:
        raise InputError(f"{path}: written with another configuration; use a new --out or "
                         "delete it to start over")
    model.net.load_state_dict(checkpoint["state_dict"], strict=True)
    optimizer.load_state_dict(checkpoint["optimizer"])
    return int(checkpoint["step"])


def config_from_options(images: str, out: str, **options: Any) -> R2D2TrainConfig:
    """Build a :class:`R2D2TrainConfig`, refusing unknown options."""
    known = {f.name for f in fields(R2D2TrainConfig)}
    unknown = set(options) - known
    if unknown:
        raise InputError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    return R2D2TrainConfig(images=images, out=out, **options)
