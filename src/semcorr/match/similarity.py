"""Similarity between point descriptors and dense maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from semcorr.conventions import check_shape

__all__ = ["cosine_similarity", "sample_descriptors", "grid_to_normalized"]


def grid_to_normalized(cells: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Continuous grid coordinates ``(..., 2)`` (cell centres at integers) → [-1, 1] for
    ``grid_sample(align_corners=False)``."""
    size = cells.new_tensor([w, h])
    return (cells + 0.5) / size * 2 - 1


def sample_descriptors(features: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample a dense map at continuous grid coordinates.

    Args:
        features: ``(B, C, h, w)``.
        cells: ``(B, N, 2)`` grid coordinates (x, y), cell centres at integers.

    Returns:
        ``(B, N, C)`` descriptors, L2-normalised.
    """
    dims = check_shape(features, "B C h w", "features")
    check_shape(cells, "B N 2", "cells")
    if cells.shape[1] == 0:
        return features.new_zeros(dims["B"], 0, dims["C"])
    grid = grid_to_normalized(cells.to(features.dtype), dims["h"], dims["w"])[:, None]
    sampled = F.grid_sample(features, grid, mode="bilinear", align_corners=False,
                            padding_mode="border")  # (B, C, 1, N)
    return F.normalize(sampled[:, :, 0].transpose(1, 2), dim=-1)


def cosine_similarity(descriptors: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of point descriptors against every cell of a dense map.

    Args:
        descriptors: ``(B, N, C)``.
        features: ``(B, C, h, w)``.

    Returns:
        ``(B, N, h, w)`` similarities in [-1, 1].
    """
    check_shape(descriptors, "B N C", "descriptors")
    dims = check_shape(features, "B C h w", "features")
    queries = F.normalize(descriptors, dim=-1)
    keys = F.normalize(features.flatten(2), dim=1)  # (B, C, h*w)
    return torch.bmm(queries, keys.to(queries.dtype)).view(
        dims["B"], queries.shape[1], dims["h"], dims["w"]
    )
