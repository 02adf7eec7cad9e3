"""Stage 1: images → dense feature maps. Importing this registers the built-in backbones."""

from semcorr.features import dense_sift as _dense_sift  # noqa: F401  (registers dense-sift)
from semcorr.features.base import (
    BACKBONES,
    Backbone,
    BackboneInfo,
    create_backbone,
    list_backbones,
    register_backbone,
)

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneInfo",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]
