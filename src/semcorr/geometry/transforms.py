"""Resize/pad transforms that map points both ways (see :mod:`semcorr.conventions`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["ResizePad", "Stretch", "flip_points", "rot90_points", "inside_image"]


@dataclass(frozen=True)
class ResizePad:
    """Resize an image so that its long side is ``size`` (aspect kept), then pad it to a
    ``size x size`` square (centred with zeros by default); a backbone of stride ``stride`` then
    sees a feature grid of ``size / stride`` cells per side.

    Points map as ``x_in = (x + 0.5) * scale - 0.5 + pad_left``: the pixel-centre convention is
    kept through the resize.

    Attributes:
        width, height: size of the original image in pixels.
        size: side of the square backbone input in pixels.
        stride: pixels of input per feature cell.
        anchor: ``"center"`` (padding split on both sides) or ``"top_left"`` (content at the
            top-left corner, padding at the bottom/right, as SAM's own preprocessing).
        fill: per-channel value of the padding in the image's units (``None``: zeros); e.g. the
            normalisation mean, so that the padding is zero after normalisation (SAM).
    """

    width: int
    height: int
    size: int
    stride: int = 1
    anchor: str = "center"
    fill: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.anchor not in ("center", "top_left"):
            raise ValueError(f"anchor must be 'center' or 'top_left', got {self.anchor!r}")

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
        if self.anchor == "top_left":
            return 0, 0
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
        ``(B, C, size, size)`` with antialiased bilinear resampling and padding (zeros, or
        ``fill``)."""
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
        if self.fill is None:
            return F.pad(resized, (left, self.size - w - left, top, self.size - h - top))
        canvas = resized.new_tensor(self.fill).view(1, -1, 1, 1)
        canvas = canvas.expand(image.shape[0], image.shape[1], self.size, self.size).clone()
        canvas[..., top : top + h, left : left + w] = resized
        return canvas

    def valid_cells(self, device: torch.device | None = None) -> torch.Tensor:
        """Boolean mask ``(h, w)`` of feature cells whose centre lies on image content."""
        g = self.grid_size
        centres = (torch.arange(g, device=device, dtype=torch.float32) + 0.5) * self.stride - 0.5
        left, top = self.pad
        w, h = self.resized
        cols = (centres >= left - 0.5) & (centres <= left + w - 0.5)
        rows = (centres >= top - 0.5) & (centres <= top + h - 0.5)
        return rows[:, None] & cols[None, :]


@dataclass(frozen=True)
class Stretch:
    """Resize an image to ``size x size`` ignoring its aspect ratio (no padding), with
    SD4Match's point conventions (its ``Resize((768, 768))`` and ``utils/geometry.py``).

    * Points scale as ``x * size / width`` and ``y * size / height``: no half-pixel offset,
      computed in float32 as the official code does.
    * A feature grid of ``grid`` cells per side spans the frame corner to corner:
      ``cell = x / (size - 1) * (grid - 1)`` (``align_corners``), see :meth:`to_cells`.

    Attributes:
        width, height: size of the original image in pixels.
        size: side of the stretched square.
    """

    width: int
    height: int
    size: int

    def _factors(self, points: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.size / self.width, self.size / self.height],
                            dtype=torch.float32, device=points.device)

    def to_frame(self, points: torch.Tensor) -> torch.Tensor:
        """Original pixels ``(..., 2)`` → stretched pixels ``(..., 2)`` (float32)."""
        out = points.to(torch.float32).clone()
        out[..., 0] *= self.size / self.width
        out[..., 1] *= self.size / self.height
        return out

    def from_frame(self, points: torch.Tensor) -> torch.Tensor:
        """Stretched pixels ``(..., 2)`` → original pixels ``(..., 2)`` (float32)."""
        return points.to(torch.float32) / self._factors(points)

    def box_to_frame(self, box: torch.Tensor) -> torch.Tensor:
        """An ``x1, y1, x2, y2`` box ``(4,)`` → the stretched frame (float32)."""
        return self.to_frame(box.to(torch.float32).reshape(2, 2)).reshape(4)

    def clamp(self, points: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
        """Stretched points pushed inside ``[eps, size - 1 - eps]`` (SD4Match's
        ``regularise_coordinates``: a coordinate at or beyond an edge is set to the margin)."""
        out = points.clone()
        low, high = torch.tensor(eps, dtype=out.dtype), torch.tensor(self.size - 1 - eps,
                                                                     dtype=out.dtype)
        out = torch.where(out <= 0, low, out)
        return torch.where(out >= self.size - 1, high, out)

    def apply(self, image: torch.Tensor, antialias: bool = True) -> torch.Tensor:
        """Resize ``(B, C, H, W)`` (``H, W`` = original size) to ``(B, C, size, size)``
        (bilinear; ``antialias`` like PIL's bilinear resize, else like a tensor resize)."""
        if image.shape[-2:] != (self.height, self.width):
            raise ValueError(
                f"image is {tuple(image.shape[-2:])} (h, w), transform expects "
                f"({self.height}, {self.width})"
            )
        return F.interpolate(image, size=(self.size, self.size), mode="bilinear",
                             align_corners=False, antialias=antialias)

    def to_cells(self, points: torch.Tensor, grid: int) -> torch.Tensor:
        """Stretched pixels → feature cells of a ``grid``-cell map, corner to corner."""
        return points / (self.size - 1) * (grid - 1)

    def from_cells(self, cells: torch.Tensor, grid: int) -> torch.Tensor:
        """Feature cells of a ``grid``-cell map → stretched pixels, corner to corner."""
        return cells / (grid - 1) * (self.size - 1)


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
