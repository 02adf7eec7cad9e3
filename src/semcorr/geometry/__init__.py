"""Geometry: coordinate frames and the transforms between them."""

from semcorr.geometry.transforms import (
    ResizePad,
    Stretch,
    flip_points,
    inside_image,
    rot90_points,
)
from semcorr.geometry.warp import hflip_matrix, similarity_matrix, warp_image, warp_points

__all__ = [
    "ResizePad",
    "Stretch",
    "flip_points",
    "hflip_matrix",
    "inside_image",
    "rot90_points",
    "similarity_matrix",
    "warp_image",
    "warp_points",
]
