"""The pair generators of R2D2's released WASF training, before the final crop.

Three kinds of pairs, each an image 1, an image 2 and the absolute flow ``(H1, W1, 2)`` of image
1's pixels into image 2 (pixel centres at integers), optionally a validity mask:

* :func:`synthetic_pair` (**W**eb images, **A**achen DB images): the image is rescaled
  (:func:`~semcorr.train.r2d2.transforms.random_scale`), then its copy is tilted and noised;
  the flow is the tilt's homography.
* :func:`transformed_pair` (Aachen **S**tyle-transfer pairs): a day image and its night-like
  rendering (the flow is the scaling between their sizes); the night image is rescaled, tilted
  and noised and the flow follows.
* :func:`flow_pair` (Aachen optical-**F**low pairs): two DB images, a stored flow and mask.

:func:`~semcorr.train.r2d2.pair_crop.official_pair` then turns any of them into a training
sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from semcorr.train.r2d2.transforms import (
    PairRandom,
    apply_homography,
    compose,
    pixel_noise,
    random_scale,
    random_tilt,
)

__all__ = ["RawPair", "flow_pair", "pixel_positions", "synthetic_pair", "transformed_pair"]


@dataclass
class RawPair:
    """A pair with ground truth, before the final jitter and crop.

    Attributes:
        image1, image2: RGB images.
        aflow: ``(H1, W1, 2)`` float32, position in image 2 of each pixel of image 1.
        mask: ``(H1, W1)`` uint8 (1 = the flow is valid) or ``None`` (all valid).
    """

    image1: Image.Image
    image2: Image.Image
    aflow: np.ndarray
    mask: np.ndarray | None = None


def pixel_positions(width: int, height: int) -> np.ndarray:
    """``(H * W, 2)`` int64 ``(x, y)`` of every pixel, row by row."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def _distort(image: Image.Image, rng: PairRandom, tilt: float, noise: float,
             homography: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """Tilt then noise ``image``; ``homography`` (what was applied before) is extended."""
    image, tilt_h = random_tilt(image, rng, tilt)
    image = pixel_noise(image, rng, noise)
    return image, compose(tilt_h, homography)


def synthetic_pair(image: Image.Image, rng: PairRandom, min_size: int = 256,
                   max_size: int = 1024, tilt: float = 0.5, noise: float = 25) -> RawPair:
    """A pair made from one image: rescaled, then a tilted and noised copy."""
    scaled, _ = random_scale(image, rng, min_size, max_size, can_upscale=True)
    distorted, homography = _distort(scaled, rng, tilt, noise, np.eye(3))
    width, height = scaled.size
    aflow = apply_homography(homography, pixel_positions(width, height))
    return RawPair(scaled, distorted, aflow.reshape(height, width, 2).astype(np.float32))


def transformed_pair(image1: Image.Image, image2: Image.Image, rng: PairRandom,
                     min_size: int = 256, max_size: int = 1024, tilt: float = 0.5,
                     noise: float = 25) -> RawPair:
    """A pair of registered images (same scene, maybe another size): image 2 is rescaled,
    tilted and noised."""
    width, height = image1.size
    sx, sy = image2.size[0] / float(width), image2.size[1] / float(height)
    still = pixel_positions(width, height) * np.array([sx, sy])  # float64, as released
    scaled, scale_h = random_scale(image2, rng, min_size, max_size, can_upscale=True)
    distorted, homography = _distort(scaled, rng, tilt, noise, compose(scale_h, np.eye(3)))
    aflow = apply_homography(homography, still).astype(np.float32)
    return RawPair(image1, distorted, aflow.reshape(height, width, 2))


def flow_pair(image1: Image.Image, image2: Image.Image, flow: np.ndarray,
              mask: np.ndarray) -> RawPair:
    """A pair with a stored relative flow ``(H1, W1, 2)`` and mask ``(H1, W1)``."""
    height, width = flow.shape[:2]
    aflow = flow + pixel_positions(width, height).reshape(height, width, 2)
    return RawPair(image1, image2, aflow.astype(np.float32), np.asarray(mask, dtype=np.uint8))
