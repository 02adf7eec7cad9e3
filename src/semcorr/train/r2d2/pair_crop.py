"""The last stage of R2D2's released pair generator: jitter image 2 once more, then cut two
windows that see the same scene at the same scale.

:func:`official_pair` takes any pair with an absolute flow (synthetic, style-transfer or
optical-flow) and returns the training sample, as the released ``PairLoader`` with
``RandomScale(256, 1024, can_upscale=True)``, ``ColorJitter(0.2, 0.2, 0.2, 0.1)`` and
``RandomCrop(192)`` does:

1. image 2 is rescaled and colour-jittered (:mod:`semcorr.train.r2d2.transforms`) and the flow
   follows the rescaling;
2. the crop size is ``crop x crop`` (compared with image 1's size as Python compares tuples,
   lexicographically, as released); the released loader also draws two crop offsets it never
   uses, which we draw too so the streams stay aligned;
3. up to 5 scored trials (at most 250 draws): a pixel of image 1 is drawn with probability
   proportional to the mask; its partner in image 2 (flow rounded half up, then truncated) must
   lie inside; the local scale ``sigma = sqrt|det J|`` of the flow decides the window sizes
   (``0.2 < sigma < 1``: image 1's window is ``crop / sigma`` wide; ``1 <= sigma < 5``: image 2's
   is ``crop * sigma``; otherwise the draw is rejected); a trial scores the smaller of the
   share of image 1's window whose (truncated) flow lands in image 2's window and the share of a
   16 x 16 grid over image 2's window that such flow hits; the best trial wins;
4. the windows are cut and resized to the crop size (Lanczos for images, nearest for the flow
   and mask; the flow is rescaled by ``(crop - 1) / (window - 1)`` for image 2's window), and
   flow outside the mask becomes ``nan``. If no trial succeeds both images are black and the flow
   is all ``nan``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from semcorr.train.r2d2.transforms import (
    PairRandom,
    apply_homography,
    color_jitter,
    random_scale,
)

__all__ = ["flow_scale", "official_pair"]

#: Scored trials per pair, and the draws allowed per trial.
TRIALS = 5
DRAWS_PER_TRIAL = 50
#: Side of the coverage grid over image 2's window.
COVERAGE_GRID = 16
#: Side of the canvas the released loader crops to learn the crop size.
_SIZING_CANVAS = 10000



def _window_1d(centre: int, size: float, length: int) -> slice:
    left = centre - int(0.5 + size / 2)
    right = left + int(0.5 + size)
    if left < 0:
        left, right = 0, right - left
    if right > length:
        left, right = left + length - right, length
    if left < 0:
        left, right = 0, length
    return slice(int(left), int(right))


def _window(cx: int, cy: int, size: tuple[int, int], scale: float, shape: tuple[int, ...]
            ) -> tuple[slice, slice]:
    """Rows and columns of a ``size * scale`` window centred on ``(cx, cy)``, moved inside."""
    return (_window_1d(cy, size[1] * scale, shape[0]), _window_1d(cx, size[0] * scale, shape[1]))


def flow_scale(aflow: np.ndarray) -> np.ndarray:
    """``sqrt|det J|`` of the flow ``(H, W, 2)`` by central differences, clipped to
    ``[1e-8, 1e8]``: ``(H, W)``."""
    dx_dy, dx_dx = np.gradient(aflow[:, :, 0])
    dy_dy, dy_dx = np.gradient(aflow[:, :, 1])
    return np.sqrt(np.clip(np.abs(dx_dx * dy_dy - dx_dy * dy_dx), 1e-16, 1e16))


def _score(aflow: np.ndarray, mask: np.ndarray, win1: tuple[slice, slice],
           win2: tuple[slice, slice]) -> float:
    """min(share of window 1 landing in window 2, coverage of window 2 on a 16 x 16 grid)."""
    x2, y2 = aflow[win1].reshape(-1, 2).T.astype(np.int32)
    rows, cols = win2
    inside = (cols.start <= x2) & (x2 < cols.stop) & (rows.start <= y2) & (y2 < rows.stop)
    landing = (inside * mask[win1].ravel()).mean()
    hit = np.zeros((COVERAGE_GRID, COVERAGE_GRID), bool)
    hit[np.int32(COVERAGE_GRID * (y2[inside] - rows.start) / (rows.stop - rows.start)),
        np.int32(COVERAGE_GRID * (x2[inside] - cols.start) / (cols.stop - cols.start))] = True
    return float(min(landing, hit.mean()))


def _best_windows(aflow: np.ndarray, mask: np.ndarray, size_a: tuple[int, int],
                  size_b: tuple[int, int], shape_b: tuple[int, ...], rng: np.random.RandomState
                  ) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    shape_a = mask.shape
    scale = flow_scale(aflow)
    n_valid = mask.sum()
    weights = (mask / (1e-16 + n_valid)).ravel()
    best, best_score, trials = None, -np.inf, 0
    for _ in range(DRAWS_PER_TRIAL * TRIALS):
        if trials >= TRIALS or n_valid == 0:
            break
        c1y, c1x = np.unravel_index(rng.choice(weights.size, p=weights), shape_a)
        c2x, c2y = (aflow[c1y, c1x] + 0.5).astype(np.int32)
        if not (0 <= c2x < shape_b[1] and 0 <= c2y < shape_b[0]):
            continue
        sigma = scale[c1y, c1x]
        if 0.2 < sigma < 1:
            win1 = _window(c1x, c1y, size_a, 1 / sigma, shape_a)
            win2 = _window(c2x, c2y, size_b, 1, shape_b)
        elif 1 <= sigma < 5:
            win1 = _window(c1x, c1y, size_a, 1, shape_a)
            win2 = _window(c2x, c2y, size_b, sigma, shape_b)
        else:
            continue
        score = _score(aflow, mask, win1, win2)
        trials += 1
        if score > best_score:
            best, best_score = (win1, win2), score
    return best


def _resize_float(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(values).resize(size, Image.NEAREST), dtype=np.float32)


def official_pair(image1: Image.Image, image2: Image.Image, aflow: np.ndarray,
                  mask: np.ndarray | None, rng: PairRandom, crop: int = 192,
                  min_size: int = 256, max_size: int = 1024) -> dict[str, np.ndarray]:
    """One training sample from a pair with flow (see the module docstring).

    Args:
        image1, image2: RGB images.
        aflow: ``(H1, W1, 2)`` position in image 2 of each pixel of image 1.
        mask: ``(H1, W1)`` uint8, 1 where the flow is valid (default all ones).
        rng: the pair's random streams.
        crop: output side.
        min_size, max_size: range of the short side of the second rescaling of image 2.

    Returns:
        ``image1``, ``image2`` ``(crop, crop, 3)`` uint8 (smaller when an image is), ``aflow``
        ``(2, crop, crop)`` float32 (``nan`` = no partner) and ``mask`` ``(crop, crop)`` uint8.
        When no window is found the mask is all zeros (the released loader returns the uncropped
        mask there, which cannot be batched).
    """
    aflow = np.asarray(aflow, dtype=np.float32)
    mask = np.ones(aflow.shape[:2], np.uint8) if mask is None else mask
    image2, persp = random_scale(image2, rng, min_size, max_size, can_upscale=True)
    image2 = color_jitter(image2, rng)
    aflow = apply_homography(persp, aflow.reshape(-1, 2)).reshape(aflow.shape)
    for _ in range(2):  # the released loader's unused crop offsets
        rng.numpy.randint(0, _SIZING_CANVAS - crop)
    size_a = min(image1.size, (crop, crop))  # lexicographic, as released
    size_b = min(image2.size, (crop, crop))
    pixels_a, pixels_b = np.array(image1), np.array(image2)
    windows = _best_windows(aflow, mask, size_a, size_b, pixels_b.shape, rng.numpy)
    if windows is None:
        return {"image1": np.zeros(size_a[::-1] + (3,), np.uint8),
                "image2": np.zeros(size_b[::-1] + (3,), np.uint8),
                "aflow": np.full((2,) + size_a[::-1], np.nan, np.float32),
                "mask": np.zeros(size_a[::-1], np.uint8)}
    win1, win2 = windows
    pixels_a, pixels_b, mask = pixels_a[win1], pixels_b[win2], mask[win1]
    aflow = aflow[win1] - np.float32([[[win2[1].start, win2[0].start]]])
    aflow[~mask.view(bool)] = np.nan
    aflow = aflow.transpose(2, 0, 1)
    if pixels_a.shape[1::-1] != size_a:
        pixels_a = np.asarray(Image.fromarray(pixels_a).resize(size_a, Image.LANCZOS))
        mask = np.asarray(Image.fromarray(mask).resize(size_a, Image.NEAREST))
        aflow = np.stack([_resize_float(aflow[0], size_a), _resize_float(aflow[1], size_a)])
    if pixels_b.shape[1::-1] != size_b:
        sx, sy = (np.float32(size_b) - 1) / (np.float32(pixels_b.shape[1::-1]) - 1)
        pixels_b = np.asarray(Image.fromarray(pixels_b).resize(size_b, Image.LANCZOS))
        aflow = aflow * np.float32([[[sx]], [[sy]]])
    return {"image1": pixels_a, "image2": pixels_b, "aflow": aflow, "mask": mask}
