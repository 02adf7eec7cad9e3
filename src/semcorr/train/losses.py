"""Training losses on top of the shared matching rules (the same soft-argmax as evaluation).

* :func:`info_nce_loss`: symmetric InfoNCE (CLIP-style cross-entropy both ways) between the
  descriptors of corresponding keypoints in two images;
* :func:`flow_loss`: the dense objective — the mean distance, in feature cells, between the
  window soft-argmax of each source keypoint's similarity map over the target and the target
  keypoint (:func:`semcorr.match.rules.window_soft_argmax2d`, shared with evaluation);
* :func:`gaussian_label_noise`: GeoAware-SC's noise on the target keypoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from semcorr.conventions import check_shape
from semcorr.match.rules import window_soft_argmax2d
from semcorr.match.similarity import cosine_similarity

__all__ = ["flow_loss", "gaussian_label_noise", "info_nce_loss"]


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
