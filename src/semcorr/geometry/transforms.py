"""Resize/pad transforms that map points both ways (see :mod:`semcorr.conventions`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["ResizePad", "flip_points", "rot90_points", "inside_image"]


@dataclass(frozen=True)
class ResizePad:
    """Resize an image so that its long side is ``size`` (aspect kept), then zero-pad it to a
    ``size x size`` square, centred; a backbone of stride ``stride`` then sees a feature grid of
    ``size / stride`` cells per side.

    Points map as ``x_in = (x + 0.5) * scale - 0.5 + pad_left``: the pixel-centre convention is
    kept through the resize.

    Attributes:
        width, height: size of the original image in pixels.
        size: side of the square backbone input in pixels.
        stride: pixels of input per feature cell.
    """

    width: int
    height: int
    size: int
    stride: int = 1

    @property
    def scale(self) -> float:
        """Input pixels per original pixel."""
        return self.size / max(self.width, self.height)

    @property
    def resized(self) -> tuple[int, int]:
        """(width, height) of the image content inside the input, in input pixels."""
        return (
            max(1, round(self.width * self.scale)),
            max(1, round(self.height * self.scale)),
        )

    @property
    def pad(self) -> tuple[int, int]:
        """(left, top) padding in input pixels."""
        w, h = self.resized
        return (self.size - w) // 2, (self.size - h) // 2

    @property
    def grid_size(self) -> int:
        """Cells per side of the feature grid."""
        return self.size // self.stride

    def _scales(self) -> tuple[float, float]:
        w, h = self.resized
        return w / self.width, h / self.height

    def to_input(self, points: torch.Tensor) -> torch.Tensor:
        """Original-image pixels ``(..., 2)`` → backbone-input pixels ``(..., 2)``."""
        sx, sy = self._scales()
        left, top = self.pad
        scale = points.new_tensor([sx, sy])
        offset = points.new_tensor([left, top])
        return (points + 0.5) * scale - 0.5 + offset

    def from_input(self, points: torch.Tensor) -> torch.Tensor:
        """Backbone-input pixels ``(..., 2)`` → original-image pixels ``(..., 2)``."""
        sx, sy = self._scales()
        left, top = self.pad
        scale = points.new_tensor([sx, sy])
        offset = points.new_tensor([left, top])
        return (points - offset + 0.5) / scale - 0.5

    def to_grid(self, points: torch.Tensor) -> torch.Tensor:
        """Original-image pixels → continuous grid coordinates (cell centres at integers)."""
        return (self.to_input(points) + 0.5) / self.stride - 0.5

    def from_grid(self, cells: torch.Tensor) -> torch.Tensor:
        """Continuous feature-grid coordinates → original-image pixels."""
        return self.from_input((cells + 0.5) * self.stride - 0.5)

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """Resize and pad an image ``(B, C, H, W)`` (``H, W`` = original size) to
        ``(B, C, size, size)`` with antialiased bilinear resampling and zero padding."""
        if image.shape[-2:] != (self.height, self.width):
            raise ValueError(
                f"image is {tuple(image.shape[-2:])} (h, w), transform expects "
                f"({self.height}, {self.width})"
            )
        w, h = self.resized
        resized = F.interpolate(
            image, size=(h, w), mode="bilinear", align_corners=False, antialias=True
        )
        left, top = self.pad
        return F.pad(resized, (left, self.size - w - left, top, self.size - h - top))

    def valid_cells(self, device: torch.device | None = None) -> torch.Tensor:
        """Boolean mask ``(h, w)`` of feature cells whose centre lies on image content."""
        g = self.grid_size
        centres = (torch.arange(g, device=device, dtype=torch.float32) + 0.5) * self.stride - 0.5
        left, top = self.pad
        w, h = self.resized
        cols = (centres >= left - 0.5) & (centres <= left + w - 0.5)
        rows = (centres >= top - 0.5) & (centres <= top + h - 0.5)
        return rows[:, None] & cols[None, :]


def inside_image(points: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Whether each point ``(..., 2)`` lies inside a ``width x height`` image: ``(...)`` bool."""
    x, y = points[..., 0], points[..., 1]
    return (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)


def flip_points(points: torch.Tensor, width: int) -> torch.Tensor:
    """Points ``(..., 2)`` of an image → the same pixels in its horizontal mirror."""
    out = points.clone()
    out[..., 0] = width - 1 - points[..., 0]
    return out


def rot90_points(points: torch.Tensor, width: int, height: int, k: int) -> torch.Tensor:
    """Points ``(..., 2)`` of a ``width x height`` image → the same pixels after
    ``torch.rot90(image, k, dims=(-2, -1))`` (counter-clockwise quarter turns)."""
    k %= 4
    x, y = points[..., 0], points[..., 1]
    if k == 0:
        return points.clone()
    if k == 1:  # new image is height wide, width tall
        return torch.stack([y, width - 1 - x], dim=-1)
    if k == 2:
        return torch.stack([width - 1 - x, height - 1 - y], dim=-1)
    return torch.stack([height - 1 - y, x], dim=-1)
