"""OpenCV dense SIFT + nearest neighbour, the baseline of bench_match and pf_willow_baseline.

A :class:`SiftSetting` fixes the three things that decide the baseline's work and accuracy:

* ``long_side``: the image is resized so that its longer side has this many pixels (``None``:
  the original resolution), as semcorr's ``ResizePad`` does before its backbone;
* ``step``: target descriptors sit on a grid of this pitch (resized pixels), at the same cell
  centres ``(i + 0.5) * step - 0.5`` as a backbone of stride ``step``;
* ``bins``: SIFT spatial bin widths in resized pixels, one 4x4x8 descriptor per width,
  concatenated. OpenCV's bin width is ``3 * size / 2`` for a keypoint of ``size``
  (``SIFT_DESCR_SCL_FCTR = 3`` times the keypoint scale ``size / 2``), so a bin width ``b`` is
  the keypoint size ``2 * b / 3``; the descriptor spans ``4 * b`` pixels, like a dense-sift
  cell of bin size ``b``.

:func:`equal_work` reads these three from a dense-sift backbone (its input size, stride and bin
sizes), so the baseline computes the same number of descriptors at the same resolution with the
same support as semcorr. Matches are the grid point of the nearest target descriptor (L2),
mapped back to original pixels.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from semcorr import Matcher
from semcorr.cli.common import (
    add_backbone_options,
    add_refine_options,
    backbone_from_args,
    refiner_from_args,
)

__all__ = ["SiftSetting", "default_matcher", "dense_parts", "equal_work", "grey", "nearest",
           "point_parts"]

#: OpenCV's SIFT bin width per unit of keypoint size (``SIFT_DESCR_SCL_FCTR * size / 2``).
BIN_PER_SIZE = 1.5


@dataclass(frozen=True)
class SiftSetting:
    """One configuration of the baseline (see module docstring)."""

    long_side: int | None
    step: int
    bins: tuple[float, ...]

    @property
    def sizes(self) -> tuple[float, ...]:
        """OpenCV keypoint sizes giving the bin widths ``bins``."""
        return tuple(b / BIN_PER_SIZE for b in self.bins)

    def label(self) -> str:
        side = "orig" if self.long_side is None else f"{self.long_side}px"
        bins = "+".join(f"{b:g}" for b in self.bins)
        sizes = "+".join(f"{s:.1f}" for s in self.sizes)
        return f"{side} step {self.step} bin {bins} (size {sizes})"


def default_matcher() -> Matcher:
    """The matcher ``semcorr eval`` builds when given no option: the default backbone with its
    default preset and its preferred refinement rule, read from the code (nothing hard-coded
    here, so a changed default is what these benchmarks measure)."""
    parser = argparse.ArgumentParser()
    add_backbone_options(parser)
    add_refine_options(parser)
    args = parser.parse_args([])
    backbone = backbone_from_args(args)
    return Matcher(backbone, refine=refiner_from_args(args, backbone), pose_align=args.pose_align)


def equal_work(backbone: torch.nn.Module) -> SiftSetting:
    """The setting doing dense-sift's work: its input side, stride and bin sizes."""
    bins = getattr(backbone, "bin_sizes", None)
    if bins is None:
        raise ValueError(f"{backbone.info.name}: no bin_sizes; equal work is defined for "
                         "dense-sift backbones only")
    return SiftSetting(backbone.info.image_size, backbone.info.stride,
                       tuple(float(b) for b in bins))


def grey(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` in [0, 1] → ``(H, W)`` uint8 grey (channel mean), OpenCV's input."""
    return (image.mean(0) * 255).round().byte().numpy()


def _resized(image: np.ndarray, long_side: int | None) -> tuple[np.ndarray, float, float]:
    """The image at ``long_side`` and the x, y scales (resized / original)."""
    height, width = image.shape
    if long_side is None or long_side == max(height, width):
        return image, 1.0, 1.0
    scale = long_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    method = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=method), size[0] / width, size[1] / height


def _sift(image: np.ndarray, points: np.ndarray, bin_width: float) -> np.ndarray:
    """SIFT descriptors ``(M, 128)`` at ``points`` ``(M, 2)`` (upright, bin width given)."""
    size = bin_width / BIN_PER_SIZE
    keypoints = [cv2.KeyPoint(x, y, size, 0.0) for x, y in points.tolist()]
    found, descriptors = cv2.SIFT_create().compute(image, keypoints)
    if len(found) != len(keypoints):
        raise RuntimeError(f"OpenCV dropped {len(keypoints) - len(found)} keypoints")
    return descriptors


def dense_parts(image: np.ndarray, setting: SiftSetting,
                bins: Sequence[float] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Grid points ``(M, 2)`` in original pixels and one ``(M, 128)`` descriptor block per bin
    width (``bins``, default the setting's) of the ``(H, W)`` uint8 ``image``."""
    resized, sx, sy = _resized(image, setting.long_side)
    height, width = resized.shape
    start = 0.5 * setting.step - 0.5
    xs = np.arange(start, width, setting.step, dtype=np.float32)
    ys = np.arange(start, height, setting.step, dtype=np.float32)
    grid = np.stack(np.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    parts = [_sift(resized, grid, b) for b in (setting.bins if bins is None else bins)]
    original = (grid + 0.5) / np.array([sx, sy], np.float32) - 0.5
    return original, parts


def point_parts(image: np.ndarray, points: np.ndarray, setting: SiftSetting) -> list[np.ndarray]:
    """Descriptor blocks ``(N, 128)`` per bin width at ``points`` ``(N, 2)`` (original pixels)."""
    resized, sx, sy = _resized(image, setting.long_side)
    scaled = (points + 0.5) * np.array([sx, sy], np.float32) - 0.5
    return [_sift(resized, scaled.astype(np.float32), b) for b in setting.bins]


def nearest(source: list[np.ndarray], target: list[np.ndarray], grid: np.ndarray) -> np.ndarray:
    """Grid point ``(N, 2)`` of each source descriptor's nearest target descriptor (L2 over the
    concatenated blocks)."""
    src = torch.from_numpy(np.concatenate(source, axis=1))
    tgt = torch.from_numpy(np.concatenate(target, axis=1))
    return grid[torch.cdist(src, tgt).argmin(dim=1).numpy()]
