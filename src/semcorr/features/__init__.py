"""Stage 1: images → dense feature maps. Importing this registers the built-in backbones."""

from semcorr.features import dense_sift as _dense_sift  # noqa: F401  (registers dense-sift)
from semcorr.features import dinov2, dinov3, fusion, sam, stable_diffusion  # noqa: F401, I001
from semcorr.features import geoaware_sd as _geoaware_sd  # noqa: F401  (registers recipe geoaware)
from semcorr.features import r2d2 as _r2d2  # noqa: F401  (registers r2d2, faster2d2)
from semcorr.features import sd4match as _sd4match  # noqa: F401  (registers sd4match)
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
