"""Combining the votes of several sources: a score-weighted geometric median per point, its
confidence and the spread of the votes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Consensus", "consensus", "geometric_median"]


# --- consensus -----------------------------------------------------------------------------------


def geometric_median(
    votes: torch.Tensor, weights: torch.Tensor, iterations: int = 30, eps: float = 1e-3
) -> torch.Tensor:
    """Weighted geometric median of votes (Weiszfeld's iterations), batched.

    Args:
        votes: ``(..., S, 2)`` points.
        weights: ``(..., S)`` non-negative weights (0 = ignore the vote).
        iterations: number of Weiszfeld steps from the weighted mean.
        eps: distances are clamped to it (avoids dividing by zero at a vote).

    Returns:
        ``(..., 2)`` medians; where all weights are 0, the plain mean of the votes.
    """
    w = weights.to(votes.dtype)
    total = w.sum(-1, keepdim=True)
    w = torch.where(total > 0, w, torch.ones_like(w))
    centre = (w[..., None] * votes).sum(-2) / w.sum(-1, keepdim=True)
    for _ in range(iterations):
        dist = (votes - centre[..., None, :]).norm(dim=-1).clamp_min(eps)
        inv = w / dist
        centre = (inv[..., None] * votes).sum(-2) / inv.sum(-1, keepdim=True)
    return centre


@dataclass
class Consensus:
    """The consensus of several sources' votes.

    Attributes:
        points: ``(B, N, 2)`` consensus points.
        scores: ``(B, N)`` confidence: the weighted mean vote score times the share of the
            vote weight that agrees with the consensus (0 where no vote exists).
        spread: ``(B, N)`` score-weighted mean distance of the votes to the consensus
            (pixels): the disagreement between sources, 0 for a single vote.
        support: ``(B, N)`` number of votes.
    """

    points: torch.Tensor
    scores: torch.Tensor
    spread: torch.Tensor
    support: torch.Tensor


def consensus(
    votes: torch.Tensor,
    scores: torch.Tensor,
    valid: torch.Tensor,
    radius: torch.Tensor | float,
    iterations: int = 30,
    spread_valid: torch.Tensor | None = None,
) -> Consensus:
    """Combine the votes of ``S`` sources for ``N`` points in ``B`` targets.

    Args:
        votes: ``(B, S, N, 2)`` where each source puts each point.
        scores: ``(B, S, N)`` the votes' confidences (negative values count as 0 weight).
        valid: ``(B, S, N)`` boolean, False for votes to ignore (point unlabelled in the source,
            failed cycle check).
        radius: agreement radius in pixels, a float or ``(B,)``.
        iterations: Weiszfeld iterations.
        spread_valid: ``(B, S, N)`` votes the spread is measured over (default ``valid``), e.g.
            every labelled vote, including those the cycle check dropped from the consensus.

    Returns:
        A :class:`Consensus`.
    """
    votes_t = votes.transpose(1, 2)  # (B, N, S, 2)
    valid_t = valid.transpose(1, 2)
    raw = scores.transpose(1, 2).to(votes.dtype)
    weight = torch.where(valid_t, raw.clamp_min(1e-6), torch.zeros_like(raw))
    centre = geometric_median(votes_t, weight, iterations)
    dist = (votes_t - centre[..., None, :]).norm(dim=-1)  # (B, N, S)
    total = weight.sum(-1)
    safe = total.clamp_min(1e-12)
    if spread_valid is None:
        spread = (weight * dist).sum(-1) / safe
    else:
        spread_weight = torch.where(spread_valid.transpose(1, 2), raw.clamp_min(1e-6),
                                    torch.zeros_like(raw))
        spread = (spread_weight * dist).sum(-1) / spread_weight.sum(-1).clamp_min(1e-12)
    radius_t = torch.as_tensor(radius, dtype=votes.dtype, device=votes.device)
    radius_t = radius_t.reshape(-1, 1, 1) if radius_t.dim() else radius_t
    agree = (weight * (dist <= radius_t)).sum(-1) / safe
    count = valid_t.sum(-1)
    mean_score = torch.where(valid_t, raw, torch.zeros_like(raw)).sum(-1) / count.clamp_min(1)
    point_score = torch.where(count > 0, mean_score * agree, torch.zeros_like(mean_score))
    return Consensus(centre, point_score, spread, count)
