"""Synthetic homography pairs for R2D2 training from any image folder (random homographies,
warps, flows, photometric changes), and the MMA of a model on such pairs."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from semcorr.errors import ImageError, InputError
from semcorr.features.r2d2 import R2D2, R2D2Config
from semcorr.io import load_image
from semcorr.train.r2d2.sampling import _to_grid

__all__ = [
    "SyntheticPairs",
    "flow_from_homography",
    "flow_mma",
    "homography_from_corners",
    "photometric_change",
    "random_homography",
    "synthetic_mma",
    "warp_image",
]


# --------------------------------------------------------------------------------------------
# Synthetic pairs
# --------------------------------------------------------------------------------------------


def homography_from_corners(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The homography mapping four points to four points (direct linear transform).

    Args:
        source: ``(4, 2)``.
        target: ``(4, 2)``.

    Returns:
        ``(3, 3)`` float64 with ``H[2, 2] = 1``.
    """
    s, t = source.to(torch.float64), target.to(torch.float64)
    zeros, ones = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    x, y, u, v = s[:, 0], s[:, 1], t[:, 0], t[:, 1]
    rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], dim=1)
    rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], dim=1)
    a = torch.cat([rows_u, rows_v])
    rhs = torch.cat([u, v])
    h = torch.linalg.solve(a, rhs)
    return torch.cat([h, torch.ones(1, dtype=torch.float64)]).view(3, 3)


def random_homography(
    width: int,
    height: int,
    generator: torch.Generator,
    max_rotation: float = 0.4,
    scale_range: tuple[float, float] = (0.7, 1.3),
    max_tilt: float = 0.15,
) -> torch.Tensor:
    """A random homography about the image centre: rotation, scale and a perspective tilt
    (each corner moved by up to ``max_tilt`` of the image size).

    Returns:
        ``(3, 3)`` float64 mapping image-1 pixels to image-2 pixels (same size).
    """

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape or (1,), generator=generator,
                                           dtype=torch.float64)

    cx, cy = (width - 1) / 2, (height - 1) / 2
    corners = torch.tensor([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]],
                           dtype=torch.float64)
    centred = corners - corners.new_tensor([cx, cy])
    angle = float(uniform(-max_rotation, max_rotation))
    scale = math.exp(float(uniform(math.log(scale_range[0]), math.log(scale_range[1]))))
    rot = corners.new_tensor([[math.cos(angle), -math.sin(angle)],
                              [math.sin(angle), math.cos(angle)]])
    tilt = uniform(-max_tilt, max_tilt, 4, 2) * corners.new_tensor([width, height])
    moved = (centred + tilt) @ rot.t() * scale + corners.new_tensor([cx, cy])
    return homography_from_corners(corners, moved)


def _pixel_grid(width: int, height: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(H, W, 2)`` (x, y) of every pixel centre."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=dtype), torch.arange(width, dtype=dtype),
                            indexing="ij")
    return torch.stack([xs, ys], dim=-1)


def _apply(homography: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    ones = torch.ones_like(xy[..., :1])
    mapped = torch.cat([xy, ones], dim=-1) @ homography.to(xy.dtype).t()
    return mapped[..., :2] / mapped[..., 2:3]


def warp_image(image: torch.Tensor, homography: torch.Tensor, width: int, height: int
               ) -> torch.Tensor:
    """Image 2 of size ``width x height`` with ``image2(H p) = image(p)``.

    Args:
        image: ``(3, H, W)``.
        homography: ``(3, 3)`` from ``image``'s pixels to the output's.

    Returns:
        ``(3, height, width)``; zeros where the source is outside ``image``.
    """
    source = _apply(torch.linalg.inv(homography), _pixel_grid(width, height))
    grid = _to_grid(source, image.shape[-1], image.shape[-2]).to(image.dtype)
    return F.grid_sample(image[None], grid[None], mode="bilinear", padding_mode="zeros",
                         align_corners=False)[0]


def flow_from_homography(homography: torch.Tensor, width: int, height: int,
                         width2: int | None = None, height2: int | None = None) -> torch.Tensor:
    """Absolute flow ``(2, height, width)`` (float32) of image 1's pixels; ``nan`` outside
    image 2 (``width2 x height2``, default the same size)."""
    xy = _apply(homography, _pixel_grid(width, height))
    w2, h2 = width2 or width, height2 or height
    inside = (xy[..., 0] >= -0.5) & (xy[..., 0] <= w2 - 0.5) & (xy[..., 1] >= -0.5) & (
        xy[..., 1] <= h2 - 0.5)
    xy = torch.where(inside[..., None], xy, torch.full_like(xy, float("nan")))
    return xy.permute(2, 0, 1).float()


def photometric_change(image: torch.Tensor, generator: torch.Generator,
                       strength: float = 0.2, noise: float = 25 / 255) -> torch.Tensor:
    """Random brightness, contrast, saturation, gamma and pixel noise on ``(3, H, W)`` in
    [0, 1]."""

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand(1, generator=generator))

    gray = image.mean(dim=0, keepdim=True)
    out = gray + (image - gray) * uniform(1 - strength, 1 + strength)  # saturation
    out = out.mean() + (out - out.mean()) * uniform(1 - strength, 1 + strength)  # contrast
    out = out * uniform(1 - strength, 1 + strength)  # brightness
    out = out.clamp(0, 1) ** uniform(1 - strength / 2, 1 + strength / 2)  # gamma
    out = out + noise * uniform(0, 1) * torch.randn(out.shape, generator=generator)
    return out.clamp(0, 1)


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".webp", ".tif", ".tiff"}


class SyntheticPairs(torch.utils.data.Dataset):
    """Training pairs from any image folder: a random crop, a random homography of it (with
    real content around the crop) and a photometric change.

    Item ``i`` is a function of ``(seed, i)`` only. Unreadable images are skipped (the next
    readable one is used) and listed in :attr:`skipped`.

    Args:
        root: folder searched recursively for images.
        crop: side of the square crops (pixels).
        length: number of items (default: the number of images).
        seed: base seed.
        max_side: images are first resized so their long side is at most this.
        homography: keyword options of :func:`random_homography`.

    Items are dicts: ``image1``, ``image2`` ``(3, crop, crop)`` in [0, 1], ``aflow``
    ``(2, crop, crop)``, ``homography`` ``(3, 3)`` float64.
    """

    def __init__(self, root: str | os.PathLike[str], crop: int = 192, length: int | None = None,
                 seed: int = 0, max_side: int = 512,
                 homography: dict[str, Any] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: no such image folder")
        self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not self.paths:
            raise InputError(f"{self.root}: no images ({', '.join(sorted(_IMAGE_SUFFIXES))})")
        self.crop, self.seed, self.max_side = crop, seed, max_side
        self.length = length or len(self.paths)
        self.homography = dict(homography or {})
        self.skipped: dict[str, str] = {}
        self._cache: dict[Path, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.length

    def _image(self, path: Path) -> torch.Tensor:
        if path not in self._cache:
            image = load_image(path)
            h, w = image.shape[-2:]
            factor = max(self.crop / min(h, w), min(1.0, self.max_side / max(h, w)))
            size = (max(self.crop, round(h * factor)), max(self.crop, round(w * factor)))
            image = F.interpolate(image[None], size, mode="bilinear", antialias=True,
                                  align_corners=False)[0]
            self._cache[path] = image.clamp(0, 1)
        return self._cache[path]

    def _readable(self, index: int) -> torch.Tensor:
        for k in range(len(self.paths)):
            path = self.paths[(index + k) % len(self.paths)]
            if str(path) in self.skipped:
                continue
            try:
                return self._image(path)
            except ImageError as exc:
                self.skipped[str(path)] = str(exc)
        raise InputError(f"{self.root}: none of the images is readable")

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        image = self._readable(index)
        h, w = image.shape[-2:]
        s = self.crop
        ox = int(torch.randint(0, w - s + 1, (1,), generator=generator))
        oy = int(torch.randint(0, h - s + 1, (1,), generator=generator))
        image1 = image[:, oy:oy + s, ox:ox + s]
        homography = random_homography(s, s, generator, **self.homography)
        shift = torch.tensor([[1, 0, -ox], [0, 1, -oy], [0, 0, 1]], dtype=torch.float64)
        image2 = warp_image(image, homography @ shift, s, s)
        return {
            "image1": photometric_change(image1, generator),
            "image2": photometric_change(image2, generator),
            "aflow": flow_from_homography(homography, s, s),
            "homography": homography,
        }


# --------------------------------------------------------------------------------------------
# Evaluation on synthetic pairs
# --------------------------------------------------------------------------------------------


def synthetic_mma(model: R2D2, pairs: Sequence[dict[str, torch.Tensor]], threshold: float = 3.0,
                  top_k: int = 500) -> float:
    """MMA at ``threshold`` px of single-scale keypoints (no confidence thresholds, best
    ``top_k`` by score) over synthetic pairs (items of :class:`SyntheticPairs`)."""
    from semcorr.eval.homography import evaluate_pair, mean_matching_accuracy

    config = R2D2Config.single_scale(reliability_threshold=0.0, repeatability_threshold=0.0,
                                     top_k=top_k)
    results = [
        evaluate_pair(model.extract(p["image1"], config), model.extract(p["image2"], config),
                      p["homography"], (threshold,)).accuracy
        for p in pairs
    ]
    return float(mean_matching_accuracy(results)[0])


def flow_mma(model: R2D2, pairs: Sequence[dict[str, torch.Tensor]], threshold: float = 3.0,
             top_k: int = 500) -> float:
    """MMA at ``threshold`` px of single-scale keypoints (best ``top_k``) over pairs whose
    ground truth is a flow (items of :class:`~semcorr.train.r2d2.released.ReleasedPairs`):
    mutual nearest neighbours are correct when the partner lies within ``threshold`` of where
    the flow sends the keypoint; a keypoint without flow counts as wrong, a pair without
    matches as 0."""
    from semcorr.eval.homography import match_descriptors

    config = R2D2Config.single_scale(reliability_threshold=0.0, repeatability_threshold=0.0,
                                     top_k=top_k)
    accuracies = []
    for pair in pairs:
        first, second = model.extract(pair["image1"], config), model.extract(pair["image2"],
                                                                              config)
        matches = match_descriptors(first["descriptors"], second["descriptors"])
        matched = matches >= 0
        if not bool(matched.any()):
            accuracies.append(0.0)
            continue
        xy = first["keypoints"][matched, :2].round().long()
        aflow = pair["aflow"]
        xy[:, 0].clamp_(0, aflow.shape[-1] - 1)
        xy[:, 1].clamp_(0, aflow.shape[-2] - 1)
        truth = aflow[:, xy[:, 1], xy[:, 0]].t().to(torch.float64)
        error = (truth - second["keypoints"][matches[matched], :2].to(torch.float64)).norm(dim=-1)
        accuracies.append(float((torch.nan_to_num(error, nan=float("inf")) <= threshold)
                                .double().mean()))
    return sum(accuracies) / len(accuracies)
