"""Stage 2: heads on backbone features (GeoAware-SC's post-processor, zero-shot fusion)."""

from semcorr.postprocess import geoaware as _geoaware  # noqa: F401  (registers the heads)
from semcorr.postprocess.aggregation import AggregationNetwork
from semcorr.postprocess.base import (
    HEADS,
    HeadedBackbone,
    backbone_options_for_head,
    create_head,
    list_heads,
    load_head,
    register_head,
)
from semcorr.postprocess.geoaware import PRESETS, GeoAwarePreset, ZeroShotFusion, get_preset
from semcorr.postprocess.masks import bbox_mask, load_mask, load_sam, sam_box_mask

__all__ = [
    "HEADS",
    "PRESETS",
    "AggregationNetwork",
    "GeoAwarePreset",
    "HeadedBackbone",
    "ZeroShotFusion",
    "backbone_options_for_head",
    "bbox_mask",
    "create_head",
    "get_preset",
    "list_heads",
    "load_head",
    "load_mask",
    "load_sam",
    "register_head",
    "sam_box_mask",
]
