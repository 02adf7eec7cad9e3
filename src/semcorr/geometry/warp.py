"""Known geometric warps of images and points: the ground truth of synthetic pairs.

Matrices are 3x3 and map source pixels to target pixels in semcorr's frame (``(0, 0)`` the
centre of the top-left pixel): ``[x', y', 1]^T ~ M [x, y, 1]^T``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["similarity_matrix", "hflip_matrix", "warp_points", "warp_image"]


def similarity_matrix(
    width: int,
    height: int,
    angle_deg: float = 0.0,
    scale: float = 1.0,
    shift: tuple[float, float] = (0.0, 0.0),
) -> torch.Tensor:
    """A rotation by ``angle_deg`` (counter-clockwise on screen) and a zoom by ``scale`` about
    the image centre, then a shift in pixels. Returns a float64 ``(3, 3)`` matrix."""
    cx, cy = (width - 1) / 2, (height - 1) / 2
    a = math.radians(angle_deg)
    cos, sin = scale * math.cos(a), scale * math.sin(a)
    # y points down, so a counter-clockwise turn on screen is a clockwise turn in (x, y)
    rotation = torch.tensor([[cos, sin, 0.0], [-sin, cos, 0.0], [0.0, 0.0, 1.0]],
                            dtype=torch.float64)
    to_origin = torch.tensor([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], dtype=torch.float64)
    back = torch.tensor([[1, 0, cx + shift[0]], [0, 1, cy + shift[1]], [0, 0, 1]],
                        dtype=torch.float64)
    return back @ rotation @ to_origin


def hflip_matrix(width: int) -> torch.Tensor:
    """The horizontal mirror of a ``width``-wide image, ``x' = width - 1 - x``."""
    return torch.tensor([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                        dtype=torch.float64)


def warp_points(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 matrix to points ``(..., 2)``."""
    m = matrix.to(torch.float64)
    homogeneous = torch.cat([points.to(torch.float64), points.new_ones(*points.shape[:-1], 1,
                                                                       dtype=torch.float64)], -1)
    mapped = homogeneous @ m.T
    return (mapped[..., :2] / mapped[..., 2:]).to(points.dtype)


def warp_image(image: torch.Tensor, matrix: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Warp an image ``(C, H, W)`` by ``matrix`` into a ``size = (width, height)`` canvas
    (bilinear, zeros outside)."""
    width, height = size
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64),
        torch.arange(width, dtype=torch.float64),
        indexing="ij",
    )
    target = torch.stack([xs, ys], dim=-1)
    source = warp_points(target, torch.linalg.inv(matrix.to(torch.float64)))
    src_h, src_w = image.shape[-2:]
    grid = torch.stack(
        [(source[..., 0] + 0.5) / src_w * 2 - 1, (source[..., 1] + 0.5) / src_h * 2 - 1], dim=-1
    ).to(image.dtype)
    return F.grid_sample(image[None], grid[None], mode="bilinear", align_corners=False,
                         padding_mode="zeros")[0]
