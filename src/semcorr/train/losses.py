"""Training losses on top of the shared matching rules (the same soft-argmax as evaluation).

* :func:`info_nce_loss`: symmetric InfoNCE (CLIP-style cross-entropy both ways) between the
  descriptors of corresponding keypoints in two images;
* :func:`flow_loss`: a dense objective on positions — the mean distance, in feature cells,
  between the window soft-argmax of each source keypoint's similarity map over the target and
  the target keypoint (:func:`semcorr.match.rules.window_soft_argmax2d`, shared with
  evaluation);
* :func:`gaussian_label_noise`: GeoAware-SC's noise on the target keypoints;
* :func:`grid_soft_argmax2d` / :class:`SoftArgmaxGrid` and :func:`flow_epe_loss`: GeoAware-SC's
  released dense objective, a soft-argmax whose averaging grid is trained with the head, and the
  end-point error of the displacement it gives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semcorr.conventions import check_shape
from semcorr.match.rules import argmax2d, masked_scores, window_soft_argmax2d
from semcorr.match.similarity import cosine_similarity

__all__ = [
    "SoftArgmaxGrid",
    "flow_epe_loss",
    "flow_loss",
    "gaussian_label_noise",
    "grid_soft_argmax2d",
    "info_nce_loss",
]


def info_nce_loss(
    desc0: torch.Tensor,
    desc1: torch.Tensor,
    logit_scale: torch.Tensor | float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE: keypoint ``i`` of image 0 should pick keypoint ``i`` of image 1 among
    the keypoints of the pair, and the other way round.

    Args:
        desc0, desc1: ``(B, N, C)`` descriptors (normalised here).
        logit_scale: the inverse temperature (e.g. ``head.logit_scale.exp()``).
        valid: ``(B, N)`` boolean; invalid keypoints are neither queries nor candidates.

    Returns:
        Scalar: the mean over valid keypoints of the two cross-entropies' average
        (0 when no keypoint is valid).
    """
    dims = check_shape(desc0, "B N C", "desc0")
    check_shape(desc1, f"{dims['B']} {dims['N']} {dims['C']}", "desc1")
    b, n = dims["B"], dims["N"]
    if valid is None:
        valid = torch.ones(b, n, dtype=torch.bool, device=desc0.device)
    logits = logit_scale * torch.bmm(F.normalize(desc0, dim=-1),
                                     F.normalize(desc1, dim=-1).transpose(1, 2))  # (B, N, N)
    pair_ok = valid[:, :, None] & valid[:, None, :]
    logits = logits.masked_fill(~pair_ok, float("-inf"))
    labels = torch.arange(n, device=desc0.device).expand(b, n)
    rows = valid.reshape(-1)
    if not rows.any():
        return desc0.sum() * 0
    flat0 = logits.reshape(b * n, n)[rows]
    flat1 = logits.transpose(1, 2).reshape(b * n, n)[rows]
    target = labels.reshape(-1)[rows]
    return (F.cross_entropy(flat0, target) + F.cross_entropy(flat1, target)) / 2


def flow_loss(
    desc0: torch.Tensor,
    features1: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    radius: int | None = None,
    temperature: float = 0.02,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense objective: distance between the soft-argmax match and the target, in cells.

    Args:
        desc0: ``(B, N, C)`` source keypoint descriptors.
        features1: ``(B, C, h, w)`` target features.
        target: ``(B, N, 2)`` target grid coordinates (x, y).
        valid: ``(B, N)`` boolean (all valid when ``None``).
        radius: window radius in cells; ``None`` = the whole grid.
        temperature: softmax temperature.
        mask: optional ``(B, h, w)`` validity of target cells.

    Returns:
        Scalar mean end-point error over valid keypoints (0 when none).
    """
    dims = check_shape(features1, "B C h w", "features1")
    check_shape(target, f"{dims['B']} N 2", "target")
    if radius is None:
        radius = max(dims["h"], dims["w"])
    scores = cosine_similarity(desc0, features1)  # (B, N, h, w)
    predicted = window_soft_argmax2d(scores, radius, temperature, mask)
    error = (predicted - target.to(predicted.dtype)).norm(dim=-1)  # (B, N)
    if valid is None:
        return error.mean()
    if not valid.any():
        return error.sum() * 0
    return error[valid].mean()


def gaussian_label_noise(
    points: torch.Tensor, std: torch.Tensor | float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``points + N(0, std^2)`` per coordinate.

    Args:
        points: ``(B, N, 2)``.
        std: scalar or ``(B,)`` standard deviation (same units as ``points``).
        generator: random source (for reproducible training).
    """
    noise = torch.randn(points.shape, generator=generator, dtype=points.dtype,
                        device="cpu").to(points.device)
    std_t = torch.as_tensor(std, dtype=points.dtype, device=points.device)
    if std_t.dim() == 1:
        std_t = std_t[:, None, None]
    return points + noise * std_t


class SoftArgmaxGrid(nn.Module):
    """The coordinates a soft-argmax averages, in ``[-1, 1]`` per axis (GeoAware-SC's
    ``Correlation2Displacement``: ``x_normal``/``y_normal``, trained with the head).

    Args:
        width, height: cells of the target grid.
        learnable: parameters trained by the optimizer (the released recipe); ``False`` keeps
            them fixed at the cell centres (non-persistent buffers).

    ``forward()`` returns the two axes ``(width,)`` and ``(height,)``; with the initial values
    :func:`grid_soft_argmax2d` gives plain cell coordinates.
    """

    def __init__(self, width: int, height: int, learnable: bool = True) -> None:
        super().__init__()
        axes = {"x_normal": width, "y_normal": height}
        for name, cells in axes.items():
            # float64 then float32: the released grid is numpy's linspace cast to float32
            values = torch.linspace(-1.0, 1.0, cells, dtype=torch.float64).float()
            if learnable:
                self.register_parameter(name, nn.Parameter(values))
            else:
                self.register_buffer(name, values, persistent=False)
        self.learnable = learnable

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The x axis ``(w,)`` and the y axis ``(h,)`` (computed from the parameters, so that a
        distributed wrapper sees them used in its forward pass)."""
        return self.x_normal * 1, self.y_normal * 1


def grid_soft_argmax2d(
    scores: torch.Tensor,
    grid_x: torch.Tensor,
    grid_y: torch.Tensor,
    temperature: float = 0.02,
    radius: int | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft-argmax averaging a given grid: ``E[grid]`` under ``softmax(scores / temperature)``,
    mapped from ``[-1, 1]`` back to cells by ``(g + 1) (n - 1) / 2``.

    Args:
        scores: ``(B, N, h, w)``.
        grid_x, grid_y: ``(w,)`` and ``(h,)`` normalised coordinates (:class:`SoftArgmaxGrid`).
        temperature: softmax temperature.
        radius: keep only a ``(2 radius + 1)^2`` window around the argmax (``-inf`` outside);
            ``None`` = the whole grid (the released training).
        mask: optional validity mask (see :func:`~semcorr.match.rules.masked_scores`).

    Returns:
        ``(B, N, 2)`` grid coordinates (x, y).
    """
    dims = check_shape(scores, "B N h w", "scores")
    b, n, h, w = dims["B"], dims["N"], dims["h"], dims["w"]
    check_shape(grid_x, f"{w}", "grid_x")
    check_shape(grid_y, f"{h}", "grid_y")
    scores = masked_scores(scores.to(torch.promote_types(scores.dtype, torch.float32)), mask)
    if radius is not None:
        peak, _ = argmax2d(scores)  # (B, N, 2)
        xs = torch.arange(w, device=scores.device)[None, None, None, :]
        ys = torch.arange(h, device=scores.device)[None, None, :, None]
        outside = ((xs - peak[..., 0, None, None]).abs() > radius) | (
            (ys - peak[..., 1, None, None]).abs() > radius)
        scores = scores.masked_fill(outside, float("-inf"))
    probs = torch.softmax(scores.reshape(b, n, h * w) / temperature, dim=-1).view(b, n, h, w)
    x = (probs.sum(dim=2) * grid_x.to(probs.dtype)).sum(dim=-1)  # marginal over rows
    y = (probs.sum(dim=3) * grid_y.to(probs.dtype)).sum(dim=-1)
    return torch.stack([(x + 1) * (w - 1) / 2, (y + 1) * (h - 1) / 2], dim=-1)


def flow_epe_loss(
    desc0: torch.Tensor,
    features1: torch.Tensor,
    origin: torch.Tensor,
    flow: torch.Tensor,
    grid: tuple[torch.Tensor, torch.Tensor],
    valid: torch.Tensor | None = None,
    radius: int | None = None,
    temperature: float = 0.02,
) -> torch.Tensor:
    """GeoAware-SC's dense objective: the end-point error between the displacement the
    soft-argmax gives (match minus ``origin``) and the target ``flow``.

    Args:
        desc0: ``(B, N, C)`` source keypoint descriptors.
        features1: ``(B, C, h, w)`` target features.
        origin: ``(B, N, 2)`` cell of each source keypoint (x, y), where its flow starts.
        flow: ``(B, N, 2)`` target displacements in cells (label noise included).
        grid: the soft-argmax axes (:class:`SoftArgmaxGrid` output).
        valid: ``(B, N)`` boolean (all valid when ``None``).
        radius: optional window radius (``None`` = whole grid).
        temperature: softmax temperature.

    Returns:
        Scalar mean end-point error over valid keypoints (0 when none).
    """
    dims = check_shape(features1, "B C h w", "features1")
    check_shape(origin, f"{dims['B']} N 2", "origin")
    check_shape(flow, f"{dims['B']} N 2", "flow")
    scores = cosine_similarity(desc0, features1)  # (B, N, h, w)
    matched = grid_soft_argmax2d(scores, grid[0], grid[1], temperature, radius)
    error = ((matched - origin.to(matched.dtype)) - flow.to(matched.dtype)).norm(dim=-1)
    if valid is None:
        return error.mean()
    if not valid.any():
        return error.sum() * 0
    return error[valid].mean()
