"""Scoring the sources' votes on a batch of targets: source features and query descriptors
computed once, the votes and their scores, the cycle check back to the source, then the
consensus (:mod:`semcorr.transfer.combine`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from semcorr.errors import InputError
from semcorr.features.base import Backbone
from semcorr.io import load_image
from semcorr.match.similarity import cosine_similarity, sample_descriptors
from semcorr.pipeline import Matcher, SourceFeatures
from semcorr.transfer.annotations import SourceAnnotation
from semcorr.transfer.combine import Consensus, consensus
from semcorr.transfer.options import TransferConfig

__all__: list[str] = []  # internal: the steps of semcorr.transfer.job


# --- streaming -----------------------------------------------------------------------------------


@dataclass
class _Source:
    """A source ready for matching: its features and its query descriptors."""

    features: SourceFeatures
    descriptors: torch.Tensor  # (K, N, C)
    cells: torch.Tensor  # (K, N, 2) query cells in every candidate's grid
    labelled: torch.Tensor  # (K, N) the queried source point is labelled, per candidate
    pixel: float  # source original pixels per feature cell
    side: int  # longer side of the source


def _prepare_source(matcher: Matcher, annotation: SourceAnnotation, perm: Sequence[int]
                    ) -> _Source:
    from semcorr.match.pose import FLIPPING_POSES, pose_points

    image = load_image(annotation.image)
    features = matcher.source_features(image)
    width, height = features.width, features.height
    points = annotation.points.clone()
    points[~annotation.labelled] = 0.0
    try:
        points = matcher.check_points(points, width, height)
        permutation, _ = matcher.check_permutation(perm if matcher.pose_align else None,
                                                    points.shape[0])
    except InputError as exc:
        raise InputError(f"{annotation.image}: {exc}") from None
    descriptors = matcher.query_descriptors(features, points, permutation)
    cells, labelled = [], []
    identity = torch.arange(points.shape[0])
    for k, pose in enumerate(features.poses):
        order = permutation if permutation is not None and pose in FLIPPING_POSES else identity
        cells.append(features.transforms[k].to_grid(pose_points(points[order], width, height,
                                                                pose)))
        labelled.append(annotation.labelled[order])
    transform = features.transforms[0]
    device = features.features.device
    return _Source(features, descriptors, torch.stack(cells).to(device),
                   torch.stack(labelled).to(device), transform.stride / transform.scale,
                   max(width, height))


def _cycle_error(
    matcher: Matcher,
    source: _Source,
    chosen: torch.Tensor,
    target_features: torch.Tensor,
    cells: torch.Tensor,
) -> torch.Tensor:
    """How far target cells ``(B, N, 2)`` map back from their query in the source's chosen
    candidate, as a fraction of the source's longer side → ``(B, N)``."""
    back_queries = sample_descriptors(target_features, cells)  # (B, N, C)
    source_features = source.features.features[chosen]  # (B, C, h, w)
    masks = source.features.valid_masks()[chosen]
    similarity = cosine_similarity(back_queries, F.normalize(source_features, dim=1))
    back, _ = matcher.refiner(similarity, masks)
    return (back - source.cells[chosen]).norm(dim=-1) * (source.pixel / source.side)


def _transfer_batch(
    matcher: Matcher,
    sources: Sequence[_Source],
    features: torch.Tensor,
    transforms: Sequence[Any],
    config: TransferConfig,
) -> Consensus:
    """Votes of every source on a batch of target features ``(B, C, h, w)`` → consensus."""
    masks = torch.stack([t.valid_cells(features.device) for t in transforms])
    unit = F.normalize(features, dim=1)
    chosen = [matcher.choose_poses(s.features, features)[0] for s in sources]
    pairs = zip(sources, chosen, strict=True)
    queries = torch.cat([s.descriptors.to(features.device)[c] for s, c in pairs],
                        dim=1)  # (B, S * N, C)
    cells, scores = matcher.refiner(cosine_similarity(queries, unit), masks)
    b, n = features.shape[0], sources[0].descriptors.shape[1]
    cells = cells.float().view(b, len(sources), n, 2)
    scores = scores.float().view(b, len(sources), n)
    labelled = torch.stack([s.labelled[c] for s, c in zip(sources, chosen, strict=True)],
                           dim=1)  # (B, S, N)
    valid = labelled
    if config.cycle:
        error = torch.stack([
            _cycle_error(matcher, s, c, unit, cells[:, i])
            for i, (s, c) in enumerate(zip(sources, chosen, strict=True))
        ], dim=1)  # (B, S, N)
        ok = error <= config.cycle_radius
        # a vote's confidence decays with its cycle error (Gaussian, sigma = the radius)
        scores = scores * torch.exp(-0.5 * (error / config.cycle_radius) ** 2)
        passed = (valid & ok).any(dim=1, keepdim=True)  # (B, 1, N)
        valid = torch.where(passed, valid & ok, valid)
    votes = torch.stack([t.from_grid(cells[i]) for i, t in enumerate(transforms)])
    radius = votes.new_tensor([config.agreement_radius * max(t.width, t.height)
                               for t in transforms])
    return consensus(votes, scores, valid, radius, config.iterations, spread_valid=labelled)


def _cached_target_features(
    backbone: Backbone, cache: Any, paths: Sequence[Path]
) -> tuple[torch.Tensor, list[Any]]:
    """Target features ``(B, C, h, w)`` from a feature cache (computed and stored when missing)."""
    from semcorr.features.cache import cached_features

    maps, transforms = [], []
    for path in paths:
        parts, transform = cached_features(backbone, cache, path)
        if len(parts) == 1:
            feature = next(iter(parts.values()))
        elif hasattr(backbone, "fuse"):
            feature = backbone.fuse(parts)
        else:
            raise InputError(f"{cache.root}: backbone {backbone.info.name!r} has several parts "
                             "and no fuse(); run without --cache")
        maps.append(feature)
        transforms.append(transform)
    return torch.cat(maps).to(backbone.device), transforms
