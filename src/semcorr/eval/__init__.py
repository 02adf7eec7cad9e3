"""Stage 4: metrics (PCK) and the benchmark runner."""

from semcorr.eval.benchmark import evaluate
from semcorr.eval.pck import (
    DEFAULT_THRESHOLDS,
    PCKAccumulator,
    bbox_reference,
    image_reference,
    keypoint_reference,
    pck_correct,
    per_image_pck,
    per_keypoint_pck,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "PCKAccumulator",
    "bbox_reference",
    "evaluate",
    "image_reference",
    "keypoint_reference",
    "pck_correct",
    "per_image_pck",
    "per_keypoint_pck",
]
