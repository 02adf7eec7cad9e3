"""Feature maps as colour pictures: a joint PCA of several images' dense features.

All images are projected with the *same* principal axes and the same colour scaling, so that
corresponding parts (and mirrored parts, for flip-equivariant features) share colours. An
optional foreground mask keeps the cells whose first component passes a threshold; the
colours are then computed from a second PCA of the foreground cells only (DINOv2's recipe).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from semcorr.errors import InputError
from semcorr.features.base import Backbone
from semcorr.io.files import atomic_write_bytes

__all__ = [
    "PCAProjection",
    "feature_pca",
    "fit_pca",
    "image_features",
    "pca_pictures",
    "save_pca_pictures",
]


@dataclass(frozen=True)
class PCAProjection:
    """Principal axes and colour scaling shared by all projected maps.

    Attributes:
        mean: ``(C,)`` feature mean.
        axes: ``(C, K)`` unit principal axes, largest variance first; each axis' sign is
            fixed so that its largest-magnitude loading is positive (deterministic colours).
        low, high: ``(K,)`` the 1st and 99th percentiles of the projections (mapped to 0 and 1).
        explained: ``(K,)`` fraction of the total variance of each axis.
    """

    mean: torch.Tensor
    axes: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    explained: torch.Tensor

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Features ``(N, C)`` → colours ``(N, K)`` in [0, 1]."""
        scores = (features.to(self.axes) - self.mean) @ self.axes
        return ((scores - self.low) / (self.high - self.low).clamp_min(1e-12)).clamp(0, 1)


def fit_pca(features: torch.Tensor, components: int = 3) -> PCAProjection:
    """Fit a PCA to feature vectors.

    Args:
        features: ``(N, C)`` with ``N >= 2``; computed in float64 on their device.
        components: number of axes ``K`` kept (at most ``C``).

    Returns:
        The projection; its tensors are float64 on the features' device.
    """
    if features.ndim != 2 or features.shape[0] < 2:
        raise InputError(
            f"PCA needs at least two feature vectors (got shape {tuple(features.shape)})"
        )
    x = features.to(torch.float64)
    k = min(components, x.shape[1])
    mean = x.mean(dim=0)
    centred = x - mean
    covariance = centred.T @ centred / (x.shape[0] - 1)
    values, vectors = torch.linalg.eigh(covariance)  # ascending
    values, vectors = values.flip(0)[:k], vectors.flip(1)[:, :k]
    signs = vectors.gather(0, vectors.abs().argmax(dim=0, keepdim=True)).sign()
    axes = vectors * torch.where(signs == 0, torch.ones_like(signs), signs)
    scores = centred @ axes
    low = torch.quantile(scores, 0.01, dim=0)
    high = torch.quantile(scores, 0.99, dim=0)
    explained = values.clamp_min(0) / covariance.diagonal().sum().clamp_min(1e-300)
    return PCAProjection(mean, axes, low, high, explained)


def _cells(maps: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([m.flatten(1).T[k.flatten()] for m, k in zip(maps, masks, strict=True)], dim=0)


def feature_pca(
    maps: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor] | None = None,
    foreground_threshold: float | None = None,
    invert_foreground: bool = False,
) -> tuple[list[torch.Tensor], list[torch.Tensor], PCAProjection]:
    """Jointly project feature maps to RGB.

    Args:
        maps: feature maps ``(C, h_i, w_i)`` (grids may differ, channels may not).
        masks: ``(h_i, w_i)`` boolean cells to fit and show (image content); all by default.
        foreground_threshold: when set, keep the cells whose first component, scaled to [0, 1]
            by :class:`PCAProjection`, exceeds it, and recolour them by a PCA of those cells.
        invert_foreground: treat the cells *below* the threshold as foreground (the sign of the
            first component is arbitrary).

    Returns:
        ``(colours, shown, projection)``: ``(3, h_i, w_i)`` RGB in [0, 1] (black outside
        ``shown``), the ``(h_i, w_i)`` boolean masks of the coloured cells, and the final PCA.
    """
    if not maps:
        raise InputError("no feature maps to project")
    if len({m.shape[0] for m in maps}) != 1:
        raise InputError("feature maps have different channel counts")
    if masks is None:
        masks = [torch.ones(m.shape[1:], dtype=torch.bool, device=m.device) for m in maps]
    masks = [k.to(device=m.device, dtype=torch.bool) for m, k in zip(maps, masks, strict=True)]
    projection = fit_pca(_cells(maps, masks), 3)
    if foreground_threshold is not None:
        first = [projection.project(m.flatten(1).T)[:, 0].view(m.shape[1:]) for m in maps]
        fg = [(f < foreground_threshold) if invert_foreground else (f > foreground_threshold)
              for f in first]
        masks = [k & f for k, f in zip(masks, fg, strict=True)]
        if sum(int(k.sum()) for k in masks) < 2:
            raise InputError(
                f"foreground threshold {foreground_threshold} leaves fewer than two cells"
            )
        projection = fit_pca(_cells(maps, masks), 3)
    colours = []
    for m, k in zip(maps, masks, strict=True):
        rgb = projection.project(m.flatten(1).T).T.reshape(-1, *m.shape[1:])
        rgb = F.pad(rgb, (0, 0, 0, 0, 0, 3 - rgb.shape[0]))  # fewer than 3 channels: pad
        colours.append(torch.where(k[None], rgb, torch.zeros_like(rgb)).float())
    return colours, masks, projection


def image_features(
    backbone: Backbone, images: Sequence[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each image's features cropped to its content.

    Args:
        backbone: any dense backbone.
        images: ``(3, H_i, W_i)`` in [0, 1].

    Returns:
        ``(maps, masks)``: ``(C, h_i, w_i)`` features and ``(h_i, w_i)`` content masks, on the
        backbone's grid (the padding cells are cropped away).
    """
    maps, masks = [], []
    for image in images:  # one image at a time: a few images, memory stays flat
        features, (transform,) = backbone.extract([image])
        valid = transform.valid_cells(features.device)
        rows = valid.any(dim=1).nonzero().flatten()
        cols = valid.any(dim=0).nonzero().flatten()
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        maps.append(features[0, :, r0:r1, c0:c1].float())
        masks.append(valid[r0:r1, c0:c1])
    return maps, masks


def _picture(colours: torch.Tensor, width: int, height: int) -> Image.Image:
    array = (colours.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    small = Image.fromarray(np.ascontiguousarray(array))
    return small.resize((width, height), Image.Resampling.NEAREST)


def pca_pictures(
    backbone: Backbone,
    images: Sequence[torch.Tensor],
    foreground_threshold: float | None = None,
    invert_foreground: bool = False,
) -> list[Image.Image]:
    """PCA pictures of images, at each image's original size (one colour per feature cell).

    Args:
        backbone: any dense backbone.
        images: ``(3, H_i, W_i)`` in [0, 1].
        foreground_threshold, invert_foreground: see :func:`feature_pca`.

    Returns:
        One RGB picture per image.
    """
    maps, masks = image_features(backbone, images)
    colours, _, _ = feature_pca(maps, masks, foreground_threshold, invert_foreground)
    pairs = zip(colours, images, strict=True)
    return [_picture(c, img.shape[-1], img.shape[-2]) for c, img in pairs]


def save_pca_pictures(
    pictures: Sequence[Image.Image],
    paths: Sequence[str | os.PathLike[str]],
    images: Sequence[torch.Tensor] | None = None,
) -> None:
    """Write pictures as PNGs atomically; with ``images``, each image is shown beside its map."""
    for i, (picture, path) in enumerate(zip(pictures, paths, strict=True)):
        if images is not None:
            from semcorr.viz.matches import _to_pil

            photo = _to_pil(images[i])
            both = Image.new("RGB", (photo.width + picture.width, photo.height), "white")
            both.paste(photo, (0, 0))
            both.paste(picture, (photo.width, 0))
            picture = both
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        atomic_write_bytes(path, buffer.getvalue())
