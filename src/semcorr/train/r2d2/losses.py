"""The losses of R2D2 training: the differentiable (quantised) AP loss of the descriptors, the
reliability-weighted AP loss, and the repeatability losses (cosine similarity across the flow,
peakiness), combined in :class:`R2D2Loss` (shapes and the flow: :mod:`semcorr.train.r2d2`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from semcorr.errors import InputError
from semcorr.train.r2d2.sampling import neighbourhood_sampler, warp_to_first

__all__ = ["APLoss", "R2D2Loss", "cosim_loss", "peaky_loss", "quantized_ap", "reliability_ap_loss"]


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
