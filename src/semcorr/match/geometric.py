"""A global geometric prior for matching: fit one affine map from the source object to the
target object, then favour each point's candidates near where that map sends it.

The fit uses the mutual nearest neighbours between every feature cell of the two images (on a
coarse grid, ``fit_grid`` cells per side), weighted by their similarity, with RANSAC over
triples; the prior subtracts ``strength * d² / (2 sigma²)`` from each cosine similarity, ``d``
the distance in cells to the predicted position (so it moves an argmax only between candidates
whose similarities are close). Everything is batched over the RANSAC hypotheses; no loop runs
over points or cells.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from semcorr.errors import InputError

__all__ = ["PRIOR_CHOICES", "AffinePrior", "fit_affine_ransac", "grid_cells",
           "mutual_nearest_cells", "resolve_prior"]

#: Names a prior may be given by: the backbone's own, none, or the affine prior's defaults.
PRIOR_CHOICES: tuple[str, ...] = ("auto", "none", "affine")


def grid_cells(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """Cell centres ``(h * w, 2)`` (x, y) of an ``h x w`` grid, row-major."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


def _coarse(features: torch.Tensor, valid: torch.Tensor, size: int
            ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Features ``(C, h, w)`` and valid cells ``(h, w)`` → unit descriptors ``(P, C)`` on a
    ``size``-cell grid (area-pooled), their validity ``(P,)`` and the cells-per-coarse-cell
    factor (native cells are ``factor`` times finer)."""
    h = features.shape[-1]
    if h <= size:
        return (F.normalize(features.flatten(1).t().float(), dim=1), valid.flatten(),
                1.0)
    pooled = F.adaptive_avg_pool2d(features[None].float(), size)[0]
    share = F.adaptive_avg_pool2d(valid[None, None].float(), size)[0, 0]
    return F.normalize(pooled.flatten(1).t(), dim=1), share.flatten() > 0.5, h / size


def mutual_nearest_cells(
    source: torch.Tensor,
    target: torch.Tensor,
    source_valid: torch.Tensor,
    target_valid: torch.Tensor,
    size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mutual nearest neighbours between the valid cells of two square feature maps.

    Args:
        source, target: ``(C, h, h)`` features.
        source_valid, target_valid: ``(h, h)`` boolean, the cells on the image (not padding).
        size: the maps are area-pooled to ``size x size`` cells first (when finer).

    Returns:
        source cells ``(M, 2)``, target cells ``(M, 2)`` (x, y in native grid coordinates)
        and their cosine similarities ``(M,)``.
    """
    src, src_ok, factor = _coarse(source, source_valid, size)
    tgt, tgt_ok, _ = _coarse(target, target_valid, size)
    sim = src @ tgt.t()
    sim = sim.masked_fill(~src_ok[:, None] | ~tgt_ok[None, :], -2.0)
    best, to_target = sim.max(dim=1)
    to_source = sim.argmax(dim=0)
    rows = torch.arange(src.shape[0], device=src.device)
    keep = (to_source[to_target] == rows) & src_ok & (best > -2.0)
    side = int(round(src.shape[0] ** 0.5))
    cells = (grid_cells(side, side, src.device) + 0.5) * factor - 0.5
    return cells[keep], cells[to_target[keep]], best[keep]


def _solve_affine(src: torch.Tensor, trg: torch.Tensor, weights: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted least-squares affine maps ``(R, 3, 2)`` from ``src``/``trg`` ``(R, M, 2)`` and
    ``weights`` ``(R, M)`` (``[x, y, 1] @ A``), and whether each was solvable ``(R,)``."""
    ones = torch.ones_like(src[..., :1])
    design = torch.cat([src, ones], dim=-1) * weights[..., None].sqrt()
    rhs = trg * weights[..., None].sqrt()
    normal = design.transpose(1, 2) @ design
    maps, info = torch.linalg.solve_ex(normal.double(), (design.transpose(1, 2) @ rhs).double())
    ok = (info == 0) & torch.isfinite(maps).all(dim=(1, 2))
    return torch.where(ok[:, None, None], maps, 0).float(), ok


def fit_affine_ransac(
    src: torch.Tensor,
    trg: torch.Tensor,
    weights: torch.Tensor,
    threshold: float,
    iterations: int = 256,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RANSAC over triples, then a least-squares refit on the inliers of the best.

    Args:
        src, trg: ``(M, 2)`` corresponding cells.
        weights: ``(M,)`` non-negative confidence of each correspondence.
        threshold: inlier distance in cells.
        iterations: random triples tried (all at once).
        seed: of the triples (deterministic results).

    Returns:
        the affine map ``(3, 2)`` (``[x, y, 1] @ A``) and the inlier mask ``(M,)``; the identity
        and no inlier when fewer than 3 correspondences exist.
    """
    m = src.shape[0]
    identity = torch.eye(3, 2, device=src.device)
    if m < 3:
        return identity, torch.zeros(m, dtype=torch.bool, device=src.device)
    gen = torch.Generator().manual_seed(seed)
    triples = torch.randint(0, m, (iterations, 3), generator=gen).to(src.device)
    maps, solvable = _solve_affine(src[triples], trg[triples],
                                   torch.ones(iterations, 3, device=src.device))
    design = torch.cat([src, torch.ones_like(src[:, :1])], dim=1)  # (M, 3)
    errors = (design[None] @ maps - trg[None]).norm(dim=-1)  # (R, M)
    inliers = errors < threshold
    support = (inliers.float() * weights[None]).sum(dim=1)
    support = torch.where(solvable, support, torch.zeros_like(support))
    best = inliers[support.argmax()]
    if int(best.sum()) < 3:
        return identity, best
    refit, solvable = _solve_affine(src[best][None], trg[best][None], weights[best][None])
    return (refit[0] if bool(solvable[0]) else identity), best


@dataclasses.dataclass(frozen=True)
class AffinePrior:
    """Favour matches near the position a global affine fit predicts (see module docstring).

    The defaults of ``sigma`` and ``strength`` were chosen on the PF-Willow development classes
    only (``benchmarks/sweep_dense_sift_dev.py --prior-grid``, docs/protocol.md); the fit's
    settings were set once and not swept.

    Args:
        sigma: width of the prior, as a fraction of the feature grid's side.
        strength: similarity taken away at one ``sigma`` is ``strength / 2``.
        fit_grid: cells per side of the grid the mutual nearest neighbours are found on.
        threshold: RANSAC inlier distance, as a fraction of the grid's side.
        iterations: RANSAC hypotheses.
    """

    sigma: float = 0.2
    strength: float = 0.1
    fit_grid: int = 32
    threshold: float = 0.08
    iterations: int = 256

    def __post_init__(self) -> None:
        for name in ("sigma", "strength", "threshold"):
            if not getattr(self, name) > 0:
                raise InputError(f"affine prior: {name} must be > 0")
        if self.fit_grid < 2 or self.iterations < 1:
            raise InputError("affine prior: fit_grid must be >= 2 and iterations >= 1")

    def fit(self, source: torch.Tensor, target: torch.Tensor, source_valid: torch.Tensor,
            target_valid: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Affine map ``(3, 2)`` from source to target grid cells and its inlier count, for
        features ``(C, h, h)`` and valid cells ``(h, h)``."""
        src, trg, sim = mutual_nearest_cells(source, target, source_valid, target_valid,
                                             self.fit_grid)
        side = source.shape[-1]
        matrix, inliers = fit_affine_ransac(src, trg, sim.clamp_min(0), self.threshold * side,
                                            self.iterations)
        return matrix, int(inliers.sum())

    def apply(self, scores: torch.Tensor, cells: torch.Tensor, matrix: torch.Tensor
              ) -> torch.Tensor:
        """Similarities ``(N, h, w)`` of the query cells ``(N, 2)`` (source grid) with the
        prior of ``matrix`` ``(3, 2)`` subtracted."""
        n, h, w = scores.shape
        predicted = torch.cat([cells, torch.ones_like(cells[:, :1])], dim=1) @ matrix  # (N, 2)
        grid = grid_cells(h, w, scores.device)  # (h*w, 2)
        squared = ((grid[None] - predicted[:, None]) ** 2).sum(dim=-1).view(n, h, w)
        scale = (self.sigma * w) ** 2
        return scores - self.strength * squared / (2 * scale)


def resolve_prior(prior: AffinePrior | str | None, preferred: object = None
                  ) -> AffinePrior | None:
    """The prior a matcher uses: ``prior`` itself, ``None`` for ``None``/``"none"``, the
    defaults for ``"affine"``, and for ``"auto"`` the backbone's ``preferred`` settings (a dict
    of :class:`AffinePrior` fields, or ``None`` for no prior).

    Raises:
        InputError: for another name or a malformed preferred setting.
    """
    if prior is None or isinstance(prior, AffinePrior):
        return prior
    if prior not in PRIOR_CHOICES:
        raise InputError(f"prior must be one of {', '.join(PRIOR_CHOICES)}, not {prior!r}")
    if prior == "none" or (prior == "auto" and preferred is None):
        return None
    if prior == "affine":
        return AffinePrior()
    if not isinstance(preferred, dict):
        raise InputError(f"a backbone's preferred prior must be a dict, not {preferred!r}")
    try:
        return AffinePrior(**preferred)
    except TypeError as exc:
        raise InputError(f"prior: {exc}") from None
