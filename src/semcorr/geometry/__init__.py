"""Geometry: coordinate frames and the transforms between them."""

from semcorr.geometry.transforms import ResizePad, flip_points, inside_image, rot90_points

__all__ = ["ResizePad", "flip_points", "inside_image", "rot90_points"]
