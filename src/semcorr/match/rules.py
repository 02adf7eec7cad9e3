"""Matching rules: pure batched functions from similarity maps to grid coordinates.

Every rule takes similarities ``(B, N, h, w)`` of N query points against a target grid and an
optional validity mask, and returns grid coordinates ``(B, N, 2)`` as (x, y) with cell centres
at integers (see :mod:`semcorr.conventions`). Invalid cells are masked with ``-inf`` before any
max or softmax (a zero is still a logit). The same functions serve evaluation and training.
"""

from __future__ import annotations

import torch

from semcorr.conventions import UNMATCHED, check_shape
from semcorr.errors import InputError

__all__ = [
    "KERNEL_WEIGHTINGS",
    "argmax2d",
    "soft_argmax2d",
    "window_soft_argmax2d",
    "kernel_soft_argmax2d",
    "mutual_nearest_neighbors",
    "masked_scores",
]

#: Where the Gaussian of :func:`kernel_soft_argmax2d` acts.
KERNEL_WEIGHTINGS: tuple[str, ...] = ("probability", "score")


def masked_scores(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Set scores of invalid cells to ``-inf``.

    Args:
        scores: ``(B, N, h, w)``.
        mask: ``(h, w)``, ``(B, h, w)`` or ``(B, N, h, w)`` boolean, True where valid; or None.
    """
    if mask is None:
        return scores
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None]
    return scores.masked_fill(~mask.to(torch.bool), float("-inf"))


def _grid(h: int, w: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell x and y coordinates ``(h, w)`` each, on ``like``'s device (float32 at least)."""
    dtype = torch.promote_types(like.dtype, torch.float32)
    ys = torch.arange(h, device=like.device, dtype=dtype)
    xs = torch.arange(w, device=like.device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return gx, gy


def _expectation(logits: torch.Tensor) -> torch.Tensor:
    """Soft-argmax of logits ``(B, N, h, w)`` → ``(B, N, 2)``, computed in float32 at least."""
    b, n, h, w = logits.shape
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    probs = torch.softmax(logits.reshape(b, n, h * w), dim=-1).view(b, n, h, w)
    gx, gy = _grid(h, w, logits)
    x = (probs * gx).sum(dim=(-2, -1))
    y = (probs * gy).sum(dim=(-2, -1))
    return torch.stack([x, y], dim=-1)


def _offsets_from_peak(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y offsets ``(B, N, h, w)`` of every cell from each map's argmax."""
    dims = check_shape(scores, "B N h w", "scores")
    peak, _ = argmax2d(scores)
    gx, gy = _grid(dims["h"], dims["w"], scores)
    return gx - peak[..., 0, None, None], gy - peak[..., 1, None, None]


def argmax2d(
    scores: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer argmax over the grid.

    Args:
        scores: ``(B, N, h, w)`` similarities.
        mask: optional validity mask (see :func:`masked_scores`).

    Returns:
        coords: ``(B, N, 2)`` float grid coordinates (x, y) of the best cell.
        best: ``(B, N)`` the best score.
    """
    dims = check_shape(scores, "B N h w", "scores")
    scores = masked_scores(scores, mask)
    best, index = scores.flatten(2).max(dim=-1)
    w = dims["w"]
    coords = torch.stack([index % w, torch.div(index, w, rounding_mode="floor")], dim=-1)
    return coords.to(torch.float32), best


def soft_argmax2d(
    scores: torch.Tensor, temperature: float = 0.02, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Soft-argmax over the whole grid: the mean cell under ``softmax(scores / temperature)``.

    Args:
        scores: ``(B, N, h, w)``.
        temperature: softmax temperature (> 0).
        mask: optional validity mask.

    Returns:
        ``(B, N, 2)`` grid coordinates.
    """
    check_shape(scores, "B N h w", "scores")
    return _expectation(masked_scores(scores, mask) / temperature)


def window_soft_argmax2d(
    scores: torch.Tensor,
    radius: int = 3,
    temperature: float = 0.02,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft-argmax restricted to a ``(2 radius + 1)^2`` window around the argmax.

    Cells outside the window (and invalid cells) get ``-inf`` logits, so the result is exact
    whatever the sign of the similarities.

    Args:
        scores: ``(B, N, h, w)``.
        radius: half-size of the window in cells.
        temperature: softmax temperature (> 0).
        mask: optional validity mask.

    Returns:
        ``(B, N, 2)`` grid coordinates.
    """
    scores = masked_scores(scores, mask)
    dx, dy = _offsets_from_peak(scores)
    inside = (dx.abs() <= radius) & (dy.abs() <= radius)
    return _expectation(scores.masked_fill(~inside, float("-inf")) / temperature)


def kernel_soft_argmax2d(
    scores: torch.Tensor,
    sigma: float = 3.0,
    temperature: float = 0.04,
    mask: torch.Tensor | None = None,
    weighting: str = "probability",
) -> torch.Tensor:
    """Kernel soft-argmax: a Gaussian of std ``sigma`` cells centred on the argmax suppresses
    the distant cells, then the mean cell of the softmax is taken.

    ``weighting`` says where the Gaussian ``g`` acts:

    * ``"probability"`` (SFNet's kernel soft-argmax): ``softmax(scores / T) * g``,
      renormalised; formed in log space (``scores / T - d^2 / (2 sigma^2)``), exact for any
      sign of the similarities;
    * ``"score"`` (SD4Match's evaluation): ``softmax(g * scores / T)``. Note that ``g``
      pulls a negative similarity up towards 0, as in the reference.

    Args:
        scores: ``(B, N, h, w)``.
        sigma: Gaussian standard deviation in cells.
        temperature: softmax temperature (> 0).
        mask: optional validity mask.
        weighting: ``"probability"`` or ``"score"``.

    Returns:
        ``(B, N, 2)`` grid coordinates.
    """
    if weighting not in KERNEL_WEIGHTINGS:
        raise InputError(f"kernel weighting must be one of {KERNEL_WEIGHTINGS}, got {weighting!r}")
    scores = masked_scores(scores, mask)
    dx, dy = _offsets_from_peak(scores)
    log_gauss = -(dx**2 + dy**2) / (2 * sigma**2)
    if weighting == "probability":
        return _expectation(scores / temperature + log_gauss)
    suppressed = torch.where(torch.isfinite(scores), scores * log_gauss.exp(), scores)
    return _expectation(suppressed / temperature)


def mutual_nearest_neighbors(
    similarity: torch.Tensor, min_similarity: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutual nearest neighbours from a similarity matrix.

    Args:
        similarity: ``(B, N, M)``.
        min_similarity: optional lower bound a match must reach.

    Returns:
        matches0: ``(B, N)`` index into M of each mutual match, ``-1`` when unmatched.
        matches1: ``(B, M)`` index into N, ``-1`` when unmatched.
    """
    dims = check_shape(similarity, "B N M", "similarity")
    b, n, m = dims["B"], dims["N"], dims["M"]
    device = similarity.device
    if n == 0 or m == 0:
        return (
            torch.full((b, n), UNMATCHED, dtype=torch.long, device=device),
            torch.full((b, m), UNMATCHED, dtype=torch.long, device=device),
        )
    best0 = similarity.argmax(dim=2)  # (B, N)
    best1 = similarity.argmax(dim=1)  # (B, M)
    arange0 = torch.arange(n, device=device)[None].expand(b, n)
    arange1 = torch.arange(m, device=device)[None].expand(b, m)
    mutual0 = best1.gather(1, best0) == arange0
    mutual1 = best0.gather(1, best1) == arange1
    if min_similarity is not None:
        mutual0 &= similarity.gather(2, best0[..., None])[..., 0] >= min_similarity
        mutual1 &= similarity.gather(1, best1[:, None])[:, 0] >= min_similarity
    unmatched0 = torch.full_like(best0, UNMATCHED)
    unmatched1 = torch.full_like(best1, UNMATCHED)
    return torch.where(mutual0, best0, unmatched0), torch.where(mutual1, best1, unmatched1)
