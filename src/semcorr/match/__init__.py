"""Stage 3: matching rules (pure functions), their module wrappers and pose alignment."""

from semcorr.match.pose import POSES, apply_pose, instance_matching_distance, pose_points
from semcorr.match.refine import REFINERS, Refiner, create_refiner, list_refiners
from semcorr.match.rules import (
    argmax2d,
    kernel_soft_argmax2d,
    masked_scores,
    mutual_nearest_neighbors,
    soft_argmax2d,
    window_soft_argmax2d,
)
from semcorr.match.similarity import cosine_similarity, sample_descriptors

__all__ = [
    "POSES",
    "REFINERS",
    "Refiner",
    "apply_pose",
    "argmax2d",
    "cosine_similarity",
    "create_refiner",
    "instance_matching_distance",
    "kernel_soft_argmax2d",
    "list_refiners",
    "masked_scores",
    "mutual_nearest_neighbors",
    "pose_points",
    "sample_descriptors",
    "soft_argmax2d",
    "window_soft_argmax2d",
]
