"""Stage 1 (sparse): local-feature models and their registry.

A local-feature model is not a dense :class:`~semcorr.features.base.Backbone`: it returns a set
of keypoints per image. Every model registered here builds a :class:`LocalFeatures` whose
:meth:`LocalFeatures.extract` follows one contract::

    extract(image (3, H, W) in [0, 1]) -> {
        "keypoints":   (N, 3) float  (x, y, scale) in original-image pixels,
        "descriptors": (N, D) float  L2-normalised,
        "scores":      (N,)   float  higher is better, sorted in decreasing order,
    }

Coordinates follow :mod:`semcorr.conventions` ((0, 0) = centre of the top-left pixel).
"""

from __future__ import annotations

import torch
from torch import nn

from semcorr.features.base import module_device
from semcorr.registry import Registry

__all__ = [
    "LOCAL_FEATURES",
    "LocalFeatures",
    "create_local_features",
    "list_local_features",
    "register_local_features",
]


class LocalFeatures(nn.Module):
    """Base class of sparse keypoint + descriptor extractors (see the module docstring)."""

    @property
    def device(self) -> torch.device:
        return module_device(self)

    def extract(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Keypoints, descriptors and scores of one image ``(3, H, W)`` in [0, 1]."""
        raise NotImplementedError


LOCAL_FEATURES: Registry[LocalFeatures] = Registry("local-feature model")
register_local_features = LOCAL_FEATURES.register


def create_local_features(
    name: str, weights: str | None = None, **options: object
) -> LocalFeatures:
    """Build the local-feature model registered as ``name``.

    Args:
        name: see :func:`list_local_features`.
        weights: a local checkpoint file (``None``: random weights, for tests and training).
        **options: model-specific options (unknown ones are refused).

    Raises:
        UnknownNameError: for an unknown name.
        WeightsError: for weights that are missing or do not fit.
    """
    return LOCAL_FEATURES.get(name)(weights=weights, **options)


def list_local_features() -> list[str]:
    """Names of the registered local-feature models."""
    return LOCAL_FEATURES.names()
