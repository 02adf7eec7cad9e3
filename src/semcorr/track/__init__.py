"""Tracking through video: propagate first-frame points and masks with dense features.

Stages, one module each: :mod:`~semcorr.track.propagate` (the propagator),
:mod:`~semcorr.track.labels` (points and masks ↔ soft labels), :mod:`~semcorr.track.presets`
(named settings).
"""

from semcorr.track.labels import labels_to_mask, labels_to_points, mask_to_labels, points_to_labels
from semcorr.track.presets import PRESETS, TrackPreset, get_preset
from semcorr.track.propagate import LabelPropagator, PropagationConfig, propagate_labels

__all__ = [
    "PRESETS",
    "LabelPropagator",
    "PropagationConfig",
    "TrackPreset",
    "get_preset",
    "labels_to_mask",
    "labels_to_points",
    "mask_to_labels",
    "points_to_labels",
    "propagate_labels",
]
