"""The random image transforms of R2D2's released training, with their homographies.

Each transform takes a PIL image and a :class:`PairRandom` and returns the new image and the
homography ``(3, 3)`` (float64, ``H[2, 2] = 1``) mapping the input's pixels to the output's, so
ground-truth flow follows the image exactly. Parameters and sampling distributions are those of
the published ``r2d2_WASF_N16`` run:

* :func:`random_scale` ``(256, 1024, can_upscale=True)``: the short side becomes
  ``round(exp(U(log 256, log 1024)))``, the other keeps the aspect ratio (a second, degenerate
  aspect-ratio draw is still taken from the stream); bilinear resampling.
* :func:`random_tilt` ``(0.5)``: one of four edges (left, right, top, bottom) is stretched
  outwards at both ends by ``s ~ randint(1, ceil(0.5 max(W, H)))`` pixels, bicubic.
* :func:`pixel_noise` ``(25)``: ``U(0.5 - 12.5, 0.5 + 12.5)`` added to every channel value,
  truncated to uint8.
* :func:`color_jitter` ``(0.2, 0.2, 0.2, 0.1)``: brightness, contrast and saturation factors
  ``U(0.8, 1.2)`` and a hue shift ``U(-0.1, 0.1)``, applied in a random order.

Randomness comes from the two streams of :class:`PairRandom`, drawn in the released order (numpy
for scales, noise, jitter and crops; Python's ``random`` for tilts), so a seed reproduces the
released generator's pair exactly. Homographies are rounded to float32 where the released code
rounds them, which keeps the flow equal to the last bit and the window choice of
:mod:`semcorr.train.r2d2.pair_crop` identical.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

__all__ = [
    "PairRandom",
    "apply_homography",
    "color_jitter",
    "compose",
    "pixel_noise",
    "random_scale",
    "random_tilt",
]


@dataclass
class PairRandom:
    """The random streams of one generated pair.

    Attributes:
        numpy: draws of scales, noise, jitter and crop windows.
        python: draws of tilts.
    """

    numpy: np.random.RandomState
    python: random.Random

    @classmethod
    def from_seed(cls, seed: int) -> PairRandom:
        """Both streams seeded with ``seed`` (as ``np.random.seed`` and ``random.seed`` do)."""
        return cls(np.random.RandomState(seed % 2**32), random.Random(seed))


# --------------------------------------------------------------------------------------------
# Homographies
# --------------------------------------------------------------------------------------------


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """``outer @ inner`` normalised to ``[2, 2] = 1``; ``outer`` is rounded to float32 first
    (as the released composition does).

    Args:
        outer, inner: ``(3, 3)``.

    Returns:
        ``(3, 3)`` float64.
    """
    product = outer.astype(np.float32).astype(np.float64) @ inner.astype(np.float64)
    return product / product[2, 2]


def apply_homography(homography: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Map points ``(N, 2)`` through a homography rounded to float32.

    The arithmetic runs in the points' precision (float32 points stay float32, integer or
    float64 points give float64), as in the released generator.
    """
    matrix = homography.astype(np.float32)
    mapped = xy @ matrix[:, :2].T + matrix[:, 2]
    return mapped[:, :2] / mapped[:, 2:3]


def _scaling(sx: float, sy: float) -> np.ndarray:
    return np.diag([sx, sy, 1.0])


# --------------------------------------------------------------------------------------------
# Geometric transforms
# --------------------------------------------------------------------------------------------


def _log_uniform(rng: np.random.RandomState, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def random_scale_size(width: int, height: int, rng: np.random.RandomState, min_size: int = 256,
                      max_size: int = 1024, can_upscale: bool = True) -> tuple[int, int]:
    """The output size ``(w, h)`` of :func:`random_scale` (draws two numbers from ``rng``)."""
    if not can_upscale:
        max_size = min(max_size, width, height)
    size = int(0.5 + _log_uniform(rng, min_size, max_size))
    aspect = _log_uniform(rng, 1.0, 1.0)  # the released generator draws it (range [1, 1])
    if width < height:
        out_w, out_h = size, int(0.5 + size * height / width / aspect)
        if out_h < min_size:
            out_w, out_h = int(0.5 + out_w * float(min_size) / out_h), min_size
    else:
        out_w, out_h = int(0.5 + size * width / height * aspect), size
        if out_w < min_size:
            out_w, out_h = min_size, int(0.5 + out_h * float(min_size) / out_w)
    return out_w, out_h


def random_scale(image: Image.Image, rng: PairRandom, min_size: int = 256,
                 max_size: int = 1024, can_upscale: bool = True
                 ) -> tuple[Image.Image, np.ndarray]:
    """Resize so the short side is log-uniform in ``[min_size, max_size]`` (bilinear).

    As released, the image is resized only when its short side changes (up or down); the
    homography is the scaling to the drawn size either way.

    Returns:
        The image and the ``(3, 3)`` homography from input to output pixels.
    """
    width, height = image.size
    out_w, out_h = random_scale_size(width, height, rng.numpy, min_size, max_size, can_upscale)
    grows, shrinks = min(width, height) < min(out_w, out_h), min(width, height) > min(out_w, out_h)
    if (out_w, out_h) != image.size and ((can_upscale and grows) or shrinks):
        image = image.resize((out_w, out_h), Image.BILINEAR)
    return image, _scaling(out_w / width, out_h / height)


def _tilted_corners(width: int, height: int, skew: int, direction: int) -> np.ndarray:
    """Where the corners (TL, TR, BR, BL) of the input land: one edge stretched by ``skew``.

    Directions: 0 left edge, 1 right edge, 2 top edge, 3 bottom edge.
    """
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
    moves = {
        0: {0: (0, -skew), 3: (0, skew)},
        1: {1: (0, -skew), 2: (0, skew)},
        2: {0: (-skew, 0), 1: (skew, 0)},
        3: {2: (skew, 0), 3: (-skew, 0)},
    }[direction]
    for corner, move in moves.items():
        corners[corner] += move
    return corners


def _perspective_coefficients(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 8 coefficients of the homography mapping 4 ``source`` points to ``target``
    (least squares by pseudo-inverse, float64)."""
    x, y = source[:, 0], source[:, 1]
    u, v = target[:, 0], target[:, 1]
    zeros, ones = np.zeros(4), np.ones(4)
    rows = np.empty((8, 8))
    rows[0::2] = np.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], axis=1)
    rows[1::2] = np.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], axis=1)
    rhs = np.stack([u, v], axis=1).reshape(8)
    return np.linalg.pinv(rows) @ rhs


def random_tilt(image: Image.Image, rng: PairRandom, magnitude: float = 0.5
                ) -> tuple[Image.Image, np.ndarray]:
    """A random perspective tilt (bicubic): an edge stretched by up to ``magnitude`` times the
    long side.

    Returns:
        The image (same size) and the ``(3, 3)`` homography from input to output pixels.
    """
    width, height = image.size
    skew = rng.python.randint(1, int(math.ceil(max(width, height) * magnitude)))
    direction = rng.python.choice([0, 1, 2, 3])
    original = _tilted_corners(width, height, 0, 0)
    # PIL samples the input at H(output pixel): the map from the moved corners to the original
    backward = _perspective_coefficients(_tilted_corners(width, height, skew, direction),
                                         original)
    image = image.transform(image.size, Image.PERSPECTIVE, tuple(backward),
                            resample=Image.BICUBIC)
    backward32 = np.append(backward, 1.0).astype(np.float32).reshape(3, 3)
    forward = np.linalg.pinv(backward32).astype(np.float64).ravel()
    forward[8] = 1.0  # the released generator keeps the first 8 entries
    return image, forward.reshape(3, 3)


# --------------------------------------------------------------------------------------------
# Photometric transforms (the geometry is unchanged)
# --------------------------------------------------------------------------------------------


def pixel_noise(image: Image.Image, rng: PairRandom, amplitude: float = 25) -> Image.Image:
    """Add ``U(0.5 - amplitude / 2, 0.5 + amplitude / 2)`` to every value, truncate to uint8."""
    if not 0 <= amplitude < 255:
        raise ValueError(f"noise amplitude must be in [0, 255), got {amplitude}")
    values = np.asarray(image, dtype=np.float32).copy()
    values += rng.numpy.uniform(0.5 - amplitude / 2, 0.5 + amplitude / 2, size=values.shape)
    return Image.fromarray(values.clip(0, 255).astype(np.uint8))


def _shift_hue(image: Image.Image, shift: float) -> Image.Image:
    if image.mode in {"L", "1", "I", "F"}:
        return image
    hue, saturation, value = image.convert("HSV").split()
    hues = np.asarray(hue, dtype=np.uint8) + np.uint8(int(shift * 255) % 256)  # wraps around
    merged = Image.merge("HSV", (Image.fromarray(hues.astype(np.uint8), "L"), saturation, value))
    return merged.convert(image.mode)


def color_jitter(image: Image.Image, rng: PairRandom, brightness: float = 0.2,
                 contrast: float = 0.2, saturation: float = 0.2, hue: float = 0.1
                 ) -> Image.Image:
    """Brightness, contrast, saturation factors ``U(max(0, 1 - a), 1 + a)`` and a hue shift
    ``U(-hue, hue)`` (in turns), drawn in that order and applied in a random order."""
    steps = []
    if brightness > 0:
        factor = rng.numpy.uniform(max(0, 1 - brightness), 1 + brightness)
        steps.append((ImageEnhance.Brightness, factor))
    if contrast > 0:
        factor = rng.numpy.uniform(max(0, 1 - contrast), 1 + contrast)
        steps.append((ImageEnhance.Contrast, factor))
    if saturation > 0:
        factor = rng.numpy.uniform(max(0, 1 - saturation), 1 + saturation)
        steps.append((ImageEnhance.Color, factor))
    if hue > 0:
        steps.append((None, rng.numpy.uniform(-hue, hue)))
    rng.numpy.shuffle(steps)
    for enhancer, factor in steps:
        image = _shift_hue(image, factor) if enhancer is None else enhancer(image).enhance(factor)
    return image
