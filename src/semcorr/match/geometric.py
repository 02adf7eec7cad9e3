"""A global geometric prior for matching: fit one affine map from the source object to the
target object, then favour each point's candidates near where that map sends it.

The fit uses the mutual nearest neighbours between every feature cell of the two images (on a
coarse grid, ``fit_grid`` cells per side), weighted by their similarity, with RANSAC over
triples; the prior subtracts ``strength * d² / (2 sigma²)`` from each cosine similarity, ``d``
the distance in cells to the predicted position (so it moves an argmax only between candidates
whose similarities are close). Everything is batched over the RANSAC hypotheses; no loop runs
over points or cells.

Optionally (``local`` > 0) the prediction is refined locally, a non-rigid correction of the
global fit: each point's predicted position moves by the Gaussian-weighted mean residual
(target cell minus its affine image) of the mutual neighbours near it in the source, counting
only those within ``local_bound`` of the fit and shrunk towards no correction where few are
near.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from semcorr.errors import InputError

__all__ = ["LOCAL_PRIOR", "PRIOR_CHOICES", "AffinePrior", "PriorFit", "apply_affine",
           "fit_affine_ransac", "grid_cells", "mutual_nearest_cells", "resolve_prior"]

#: Names a prior may be given by: the backbone's own, none, the affine prior's defaults, or
#: the affine prior with the local refinement (:data:`LOCAL_PRIOR`).
PRIOR_CHOICES: tuple[str, ...] = ("auto", "none", "affine", "affine-local")

#: ``affine-local``: the best (width, sigma, strength) of the local refinement on the PF-Willow
#: development classes (``benchmarks/sweep_dense_sift_dev.py --explore``, docs/protocol.md).
LOCAL_PRIOR: dict[str, float] = {"sigma": 0.1, "strength": 0.1, "local": 0.1}


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


def apply_affine(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Points ``(N, 2)`` through the affine map ``(3, 2)``."""
    return torch.cat([points, torch.ones_like(points[:, :1])], dim=1) @ matrix


@dataclasses.dataclass(frozen=True)
class PriorFit:
    """One pair's fit: the affine map ``(3, 2)`` and the anchors of the local refinement, the
    source cells ``(M, 2)`` of the mutual neighbours, their residuals to the map ``(M, 2)`` and
    weights ``(M,)`` (zero for a neighbour the refinement does not use)."""

    matrix: torch.Tensor
    anchors: torch.Tensor
    residuals: torch.Tensor
    weights: torch.Tensor


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
        local: width of the local refinement's Gaussian, as a fraction of the grid's side
            (``0``: none, the affine prediction alone).
        local_bound: a mutual neighbour farther than this (fraction of the side) from the
            affine prediction does not take part in the local refinement.
        local_shrink: weight of the "no correction" term in the local mean (a point with
            fewer near neighbours moves less).
    """

    sigma: float = 0.2
    strength: float = 0.1
    fit_grid: int = 32
    threshold: float = 0.08
    iterations: int = 256
    local: float = 0.0
    local_bound: float = 0.2
    local_shrink: float = 1.0

    def __post_init__(self) -> None:
        for name in ("sigma", "strength", "threshold", "local_bound", "local_shrink"):
            if not getattr(self, name) > 0:
                raise InputError(f"affine prior: {name} must be > 0")
        if not self.local >= 0:
            raise InputError("affine prior: local must be >= 0")
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

    def fit_pair(self, source: torch.Tensor, target: torch.Tensor, source_valid: torch.Tensor,
                 target_valid: torch.Tensor, matrix: torch.Tensor | None = None) -> PriorFit:
        """:meth:`fit`, with the anchors of the local refinement (features ``(C, h, h)``,
        valid cells ``(h, h)``); ``matrix`` ``(3, 2)``: anchors around this affine map instead
        of RANSAC's (oracle analyses)."""
        src, trg, sim = mutual_nearest_cells(source, target, source_valid, target_valid,
                                             self.fit_grid)
        side = source.shape[-1]
        if matrix is None:
            matrix, _ = fit_affine_ransac(src, trg, sim.clamp_min(0), self.threshold * side,
                                          self.iterations)
        residuals = trg - apply_affine(src, matrix)
        near = residuals.norm(dim=1) < self.local_bound * side
        return PriorFit(matrix, src, residuals, sim.clamp_min(0) * near)

    def predict(self, cells: torch.Tensor, fit: PriorFit, side: int) -> torch.Tensor:
        """Predicted target cells ``(N, 2)`` of the query cells ``(N, 2)`` on a grid of
        ``side`` cells: the affine map, plus the local correction when ``local`` > 0."""
        predicted = apply_affine(cells, fit.matrix)
        if self.local == 0 or fit.anchors.shape[0] == 0:
            return predicted
        squared = torch.cdist(cells, fit.anchors) ** 2  # (N, M)
        kernel = torch.exp(-squared / (2 * (self.local * side) ** 2)) * fit.weights[None]
        correction = kernel @ fit.residuals / (kernel.sum(dim=1, keepdim=True)
                                               + self.local_shrink)
        return predicted + correction

    def apply(self, scores: torch.Tensor, cells: torch.Tensor, matrix: torch.Tensor
              ) -> torch.Tensor:
        """Similarities ``(N, h, w)`` of the query cells ``(N, 2)`` (source grid) with the
        prior of ``matrix`` ``(3, 2)`` subtracted."""
        return self.penalise(scores, apply_affine(cells, matrix))

    def apply_fit(self, scores: torch.Tensor, cells: torch.Tensor, fit: PriorFit
                  ) -> torch.Tensor:
        """:meth:`apply` around :meth:`predict`'s positions (the local refinement's)."""
        return self.penalise(scores, self.predict(cells, fit, scores.shape[-1]))

    def penalise(self, scores: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        """Similarities ``(N, h, w)`` less ``strength * d² / (2 (sigma * w)²)``, ``d`` the
        distance of each cell to the point's predicted cell ``(N, 2)``."""
        n, h, w = scores.shape
        grid = grid_cells(h, w, scores.device)  # (h*w, 2)
        squared = ((grid[None] - predicted[:, None]) ** 2).sum(dim=-1).view(n, h, w)
        scale = (self.sigma * w) ** 2
        return scores - self.strength * squared / (2 * scale)


def resolve_prior(prior: AffinePrior | str | None, preferred: object = None
                  ) -> AffinePrior | None:
    """The prior a matcher uses: ``prior`` itself, ``None`` for ``None``/``"none"``, the
    defaults for ``"affine"``, :data:`LOCAL_PRIOR` for ``"affine-local"``, and for ``"auto"``
    the backbone's ``preferred`` settings (a dict of :class:`AffinePrior` fields, or ``None``
    for no prior).

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
    if prior == "affine-local":
        return AffinePrior(**LOCAL_PRIOR)
    if not isinstance(preferred, dict):
        raise InputError(f"a backbone's preferred prior must be a dict, not {preferred!r}")
    try:
        return AffinePrior(**preferred)
    except TypeError as exc:
        raise InputError(f"prior: {exc}") from None
