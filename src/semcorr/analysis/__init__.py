"""Analyses of what features know (global pose-awareness, ...)."""

from semcorr.analysis.breakdowns import BreakdownAccumulator, breakdown_tables
from semcorr.analysis.pose_awareness import (
    PoseImages,
    confusion_table,
    pose_awareness,
    read_pose_folder,
)

__all__ = [
    "BreakdownAccumulator",
    "PoseImages",
    "breakdown_tables",
    "confusion_table",
    "pose_awareness",
    "read_pose_folder",
]
