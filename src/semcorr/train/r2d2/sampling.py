"""Pixel samplers of R2D2 training: from descriptors of two images and the flow between them to
a ranking problem.

Ground truth between two images is an *absolute flow* ``aflow`` ``(B, 2, H, W)``: for each
pixel ``(x, y)`` of image 1, the position ``(x2, y2)`` of the same point in image 2 (pixel
centres at integers, :mod:`semcorr.conventions`), ``nan`` where it has no partner.

Samplers turn descriptors ``(B, D, H, W)`` of both images and the flow into a ranking problem:
``scores`` ``(N, K)`` of N query pixels of image 1 against K candidates of image 2, ``labels``
``(N, K)`` (True = correct partner), ``valid`` ``(N,)`` (the query has a partner) and the
query's ``reliability`` ``(N,)`` when reliability maps are given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from semcorr.errors import InputError

__all__ = ["SampledPairs", "full_sampler", "grid_sampler", "neighbourhood_sampler", "warp_to_first"]


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
