"""Training SD4Match prompts: Gaussian-smoothed cross-entropy on matching distributions.

The loss (SD4Match, CVPR 2024): the source descriptor at each ground-truth keypoint is
correlated (cosine) with every cell of the target map; ``softmax(correlation / beta)`` is the
matching distribution (beta 0.04, the convention of :mod:`semcorr.match.rules`: logits =
scores / temperature); the loss is the cross-entropy of that distribution against a Gaussian
target centred on the ground-truth cell, read in a ``k x k`` window (k = 7, sigma = (k // 2) / 2
cells) by bilinear sampling: ``-sum_o g(o) log p(t + o)`` over window offsets ``o`` inside the
map, averaged over valid keypoints (or per pair, then over pairs: the official average).
``g`` is normalised to sum to 1 over the whole window; the reference leaves it as the
continuous density, whose 7 x 7 sum is 0.9654, so its loss is 0.9654 times ours. The reference
also drops window cells on the map's border row/column (strict ``0 < t + o < n - 1``); here
every cell inside the map counts. Away from the border the two agree exactly
(``tests/train/test_sd4match_pairs.py::test_loss_equals_the_official_loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from semcorr.conventions import check_shape
from semcorr.errors import InputError
from semcorr.features.sd4match import SD4MATCH_REFINE
from semcorr.match.rules import kernel_soft_argmax2d
from semcorr.match.similarity import cosine_similarity, grid_to_normalized, sample_descriptors

__all__ = [
    "gaussian_cross_entropy",
    "gaussian_kernel",
    "matching_probabilities",
    "pixels_to_cells",
    "predict_cells",
    "sd4match_loss",
]


def gaussian_kernel(size: int = 7, sigma: float | None = None, *,
                    like: torch.Tensor | None = None) -> torch.Tensor:
    """A ``(size, size)`` Gaussian ``exp(-|o|^2 / (2 sigma^2))`` over integer offsets ``o``
    centred on the middle cell, normalised to sum to 1.

    Args:
        size: odd window side ``k``.
        sigma: std in cells (default ``(size // 2) / 2``, SD4Match's choice; 1 for k = 1).
        like: tensor giving device and dtype (float32 on CPU otherwise).
    """
    if size < 1 or size % 2 == 0:
        raise InputError(f"Gaussian target window must be a positive odd size, got {size}")
    sigma = sigma if sigma is not None else max(size // 2, 1) / 2
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
    device = like.device if like is not None else None
    offsets = torch.arange(size, device=device, dtype=dtype) - size // 2
    dist2 = offsets[None, :] ** 2 + offsets[:, None] ** 2
    kernel = torch.exp(-dist2 / (2 * sigma**2))
    return kernel / kernel.sum()


def matching_probabilities(descriptors: torch.Tensor, features: torch.Tensor,
                           beta: float = 0.04) -> torch.Tensor:
    """Matching distributions ``softmax(cos / beta)`` of query descriptors over a target map.

    Args:
        descriptors: ``(B, N, C)`` source descriptors.
        features: ``(B, C, h, w)`` target features.
        beta: softmax temperature (> 0).

    Returns:
        ``(B, N, h, w)`` probabilities summing to 1 over the cells.
    """
    scores = cosine_similarity(descriptors, features)
    b, n, h, w = scores.shape
    logits = scores.to(torch.promote_types(scores.dtype, torch.float32)) / beta
    return torch.softmax(logits.reshape(b, n, h * w), dim=-1).view(b, n, h, w)


def gaussian_cross_entropy(probs: torch.Tensor, targets: torch.Tensor,
                           valid: torch.Tensor | None = None, size: int = 7,
                           sigma: float | None = None, average: str = "points") -> torch.Tensor:
    """Cross-entropy of matching distributions against Gaussian targets.

    For each keypoint: ``-sum_o g(o) log p(t + o)``, ``o`` over the ``size x size`` integer
    offsets whose cell ``t + o`` lies inside the map, ``p`` read bilinearly at ``t + o``.

    Args:
        probs: ``(B, N, h, w)`` matching distributions.
        targets: ``(B, N, 2)`` ground-truth grid coordinates (x, y), cell centres at integers.
        valid: ``(B, N)`` boolean, True for keypoints that count (default all).
        size, sigma: the Gaussian window (see :func:`gaussian_kernel`).
        average: ``points``: the mean over all valid keypoints of the batch; ``pairs``: the
            mean over each pair's valid keypoints, then over pairs (the official loss).

    Returns:
        Scalar (0 when there is no valid keypoint, still differentiable).
    """
    if average not in ("points", "pairs"):
        raise InputError(f"average must be 'points' or 'pairs', got {average!r}")
    dims = check_shape(probs, "B N h w", "probs")
    check_shape(targets, f"{dims['B']} {dims['N']} 2", "targets")
    b, n, h, w = dims["B"], dims["N"], dims["h"], dims["w"]
    kernel = gaussian_kernel(size, sigma, like=probs)
    offsets = torch.arange(size, device=probs.device, dtype=probs.dtype) - size // 2
    oy, ox = torch.meshgrid(offsets, offsets, indexing="ij")
    points = targets.to(probs.dtype)[:, :, None, None, :] + torch.stack([ox, oy], -1)
    inside = ((points[..., 0] >= 0) & (points[..., 0] <= w - 1)
              & (points[..., 1] >= 0) & (points[..., 1] <= h - 1))  # (B, N, k, k)
    grid = grid_to_normalized(points, h, w).reshape(b * n, size, size, 2)
    sampled = F.grid_sample(probs.reshape(b * n, 1, h, w), grid, mode="bilinear",
                            align_corners=False, padding_mode="border").view(b, n, size, size)
    log_p = torch.log(sampled.clamp_min(torch.finfo(sampled.dtype).tiny))
    per_point = -(kernel * log_p).masked_fill(~inside, 0.0).sum(dim=(-2, -1))  # (B, N)
    weight = per_point.new_ones(b, n) if valid is None else valid.to(per_point.dtype)
    if average == "pairs":
        return ((per_point * weight).sum(1) / weight.sum(1).clamp_min(1.0)).mean()
    return (per_point * weight).sum() / weight.sum().clamp_min(1.0)


def sd4match_loss(features0: torch.Tensor, features1: torch.Tensor, cells0: torch.Tensor,
                  cells1: torch.Tensor, valid: torch.Tensor | None = None, beta: float = 0.04,
                  size: int = 7, sigma: float | None = None, average: str = "points"
                  ) -> torch.Tensor:
    """SD4Match's loss on a batch of pairs.

    Args:
        features0, features1: ``(B, C, h0, w0)`` and ``(B, C, h1, w1)`` feature maps.
        cells0, cells1: ``(B, N, 2)`` corresponding keypoints in grid coordinates.
        valid: ``(B, N)`` boolean (default all).
        beta: softmax temperature.
        size, sigma: the Gaussian target window.
        average: ``points`` or ``pairs`` (see :func:`gaussian_cross_entropy`).

    Returns:
        Scalar loss.
    """
    descriptors = sample_descriptors(features0, cells0.to(features0.dtype))
    probs = matching_probabilities(descriptors, features1, beta)
    return gaussian_cross_entropy(probs, cells1, valid, size, sigma, average)


def predict_cells(features0: torch.Tensor, features1: torch.Tensor, cells0: torch.Tensor,
                  sigma: float = SD4MATCH_REFINE["sigma"],
                  temperature: float = SD4MATCH_REFINE["temperature"]) -> torch.Tensor:
    """SD4Match's inference: kernel soft-argmax with the Gaussian on the similarities
    (:func:`~semcorr.match.rules.kernel_soft_argmax2d`, :data:`SD4MATCH_REFINE`).

    Args:
        features0, features1: ``(B, C, h0, w0)``, ``(B, C, h1, w1)``.
        cells0: ``(B, N, 2)`` query grid coordinates in the source.
        sigma: Gaussian std around the argmax, in cells (published 7).
        temperature: softmax temperature.

    Returns:
        ``(B, N, 2)`` predicted grid coordinates in the target.
    """
    scores = cosine_similarity(sample_descriptors(features0, cells0), features1)
    return kernel_soft_argmax2d(scores, sigma=sigma, temperature=temperature,
                                weighting=SD4MATCH_REFINE["weighting"])


def pixels_to_cells(points: torch.Tensor, stride: int) -> torch.Tensor:
    """Input-pixel coordinates (pixel centres at integers) → grid coordinates of a map with
    ``stride`` pixels per cell (cell centres at integers)."""
    return (points + 0.5) / stride - 0.5
